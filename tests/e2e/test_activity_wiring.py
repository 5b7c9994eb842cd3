"""Every request is recorded: generation + per-call rows, readable over the API; metrics, overhead, cost limits."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, Script, wait_until
from openfusion.app import create_app

from .conftest import ANALYSIS

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]


def generation(url: str, generation_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The recorded generation (the writer batches off the hot path, so wait for it)."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{url}/api/v1/generation", params={"id": generation_id})
        if response.status_code == 200:
            return dict(response.json()["data"])
        assert time.monotonic() < deadline, f"generation {generation_id} was not recorded: {response.text}"
        time.sleep(0.05)


@pytest.fixture
def activity_path(tmp_path: Path) -> Path:
    return tmp_path / "activity.sqlite3"


def test_a_fusion_request_is_recorded_call_by_call(
    upstream: FakeUpstream, start_server: Any, activity_path: Path
) -> None:
    upstream.script("a", Script(delay_s=0.2, cost=0.01))
    upstream.script("b", Script(status=500))
    upstream.script("synth", Script(cost=0.02))

    with start_server(activity={"path": activity_path}) as url:
        response = httpx.post(f"{url}{CHAT}", json={"model": "fusion/trio", "messages": HI}, timeout=20)
        gid = response.headers["x-generation-id"]
        record = generation(url, gid)

    assert response.json()["id"] == gid
    assert float(response.headers["x-openfusion-overhead-ms"]) >= 0
    assert record["requested_model"] == "fusion/trio" and record["preset"] == "trio" and record["status"] == "ok"
    calls = record["calls"]
    assert sorted(c["role"] for c in calls) == ["judge", "panel", "panel", "panel", "synthesizer"]
    failed = next(c for c in calls if c["model"] == "fake/b")
    assert failed["status"] == "error" and failed["upstream_status"] == 500 and failed["retries"] == 2
    panel_a = next(c for c in calls if c["model"] == "fake/a")
    judge = next(c for c in calls if c["role"] == "judge")
    assert judge["started_ms"] >= panel_a["started_ms"] + panel_a["latency"] - 5  # the timeline's order
    assert record["tokens_prompt"] == 11 * 4 and record["tokens_completion"] == 7 * 4
    # Costs: a and synth report theirs; c and the judge report none and have no price: unknown stays unknown.
    assert record["total_cost"] is None
    assert panel_a["cost"] == pytest.approx(0.01) and failed["cost"] == 0.0
    assert "panel_answers" not in record or record["panel_answers"] is None  # content is opt-in


def test_prices_make_costs_known_and_content_is_kept_when_asked(
    upstream: FakeUpstream, start_server: Any, activity_path: Path
) -> None:
    price = {"prompt": 0.001, "completion": 0.002}
    pricing = {"models": {f"fake/{m}": price for m in ("a", "b", "c", "judge", "synth")}}

    with start_server(activity={"path": activity_path, "store_content": True}, pricing=pricing) as url:
        response = httpx.post(f"{url}{CHAT}", json={"model": "fusion/trio", "messages": HI}, timeout=20)
        record = generation(url, response.headers["x-generation-id"])

    assert record["total_cost"] == pytest.approx(5 * (11 * 0.001 + 7 * 0.002))
    assert response.json()["fusion"]["estimated_max_cost"] > record["total_cost"]
    assert [p["model"] for p in record["panel_answers"]] == ["fake/a", "fake/b", "fake/c"]
    assert record["analysis"]["consensus"] and record["final_answer"] == "Answer from synth."


def test_max_cost_refuses_before_spending(upstream: FakeUpstream, start_server: Any, activity_path: Path) -> None:
    pricing = {"models": {f"fake/{m}": {"prompt": 1e-3, "completion": 1e-3} for m in ("a", "b", "c", "judge", "synth")}}
    body = {"model": "fusion/trio", "messages": HI}

    with start_server(activity={"path": activity_path}, pricing=pricing) as url:
        over = httpx.post(f"{url}{CHAT}", json={**body, "plugins": [{"id": "fusion", "max_cost": 0.01}]})
        under = httpx.post(f"{url}{CHAT}", json={**body, "plugins": [{"id": "fusion", "max_cost": 1000}]}, timeout=20)
        unpriced = httpx.post(
            f"{url}{CHAT}",
            json={**body, "plugins": [{"id": "fusion", "max_cost": 1000, "analysis_models": ["fake/x"]}]},
        )

    assert over.status_code == 402 and over.json()["error"]["code"] == "max_cost_exceeded"
    assert "$" in over.json()["error"]["message"]
    assert under.status_code == 200
    assert unpriced.status_code == 402 and "fake/x" in unpriced.json()["error"]["message"]
    assert [c.model for c in upstream.calls].count("a") == 1  # only the affordable run reached the panel


def test_pass_through_streams_and_cancellations_are_recorded(
    upstream: FakeUpstream, start_server: Any, activity_path: Path
) -> None:
    upstream.script("slow", Script(chunks=["a"] * 50, chunk_interval_s=0.1))

    with start_server(activity={"path": activity_path}) as url:
        plain = httpx.post(f"{url}{CHAT}", json={"model": "fake/plain", "messages": HI})
        streamed = httpx.post(f"{url}{CHAT}", json={"model": "fusion/trio", "messages": HI, "stream": True}, timeout=20)
        with httpx.stream("POST", f"{url}{CHAT}", json={"model": "fake/slow", "messages": HI, "stream": True}) as r:
            gone = r.headers["x-generation-id"]
            lines = r.iter_lines()
            next(lines)
        plain_record = generation(url, plain.headers["x-generation-id"])
        stream_record = generation(url, streamed.headers["x-generation-id"])
        wait_until(lambda: httpx.get(f"{url}/api/v1/generation", params={"id": gone}).status_code == 200)
        gone_record = generation(url, gone)

    assert plain_record["calls"][0]["role"] == "passthrough" and plain_record["tokens_prompt"] == 11
    assert stream_record["streamed"] is True and stream_record["status"] == "ok"
    assert gone_record["status"] == "cancelled" and gone_record["calls"][0]["status"] == "cancelled"


def test_activity_lists_newest_first(upstream: FakeUpstream, start_server: Any, activity_path: Path) -> None:
    with start_server(activity={"path": activity_path}) as url:
        ids = [
            httpx.post(f"{url}{CHAT}", json={"model": "fake/plain", "messages": HI}).headers["x-generation-id"]
            for _ in range(3)
        ]
        for gid in ids:
            generation(url, gid)
        first = httpx.get(f"{url}/v1/activity", params={"limit": 2}).json()
        second = httpx.get(f"{url}/v1/activity", params={"limit": 2, "before": first["next_before"]}).json()

    assert [g["id"] for g in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    assert [g["id"] for g in second["data"]] == ids[:1]


def test_a_clean_stop_loses_nothing(upstream: FakeUpstream, start_server: Any, activity_path: Path) -> None:
    with start_server(activity={"path": activity_path, "flush_interval_s": 30, "batch_size": 1000}) as url:
        ids = [
            httpx.post(f"{url}{CHAT}", json={"model": "fake/plain", "messages": HI}).headers["x-generation-id"]
            for _ in range(20)
        ]
        backlog = httpx.get(f"{url}/metrics").text
    assert "openfusion_activity_queued 20.0" in backlog  # the writer's backlog is visible to operators
    # The writer held them all (a 30 s flush interval); stopping the server flushed them.
    with start_server(activity={"path": activity_path}) as url:
        listed = httpx.get(f"{url}/v1/activity", params={"limit": 50}).json()
    assert set(ids) <= {g["id"] for g in listed["data"]}


def test_the_backlog_gauge_falls_back_to_zero_once_written(
    upstream: FakeUpstream, start_server: Any, activity_path: Path
) -> None:
    with start_server(activity={"path": activity_path, "flush_interval_s": 0.05}) as url:
        for model in ("fake/plain", "fusion/trio"):
            response = httpx.post(f"{url}{CHAT}", json={"model": model, "messages": HI}, timeout=20)
            generation(url, response.headers["x-generation-id"])

        def drained() -> bool:
            return "openfusion_activity_queued 0.0" in httpx.get(f"{url}/metrics").text

        wait_until(drained, timeout=5)  # every record was read back: nothing is waiting any more
        assert "openfusion_activity_dropped 0.0" in httpx.get(f"{url}/metrics").text


def test_metrics_count_requests_stages_and_errors(
    upstream: FakeUpstream, start_server: Any, activity_path: Path
) -> None:
    upstream.script("b", Script(status=503))
    with start_server(activity={"path": activity_path}) as url:
        httpx.post(f"{url}{CHAT}", json={"model": "fusion/trio", "messages": HI}, timeout=20)
        httpx.post(f"{url}{CHAT}", json={"model": "fusion/trio", "messages": HI, "stream": True}, timeout=20)
        text = httpx.get(f"{url}/metrics").text

    assert 'openfusion_requests_total{route="fusion/trio",status="ok"} 2.0' in text
    assert 'openfusion_upstream_call_seconds_count{role="panel"} 6.0' in text
    assert 'openfusion_upstream_errors_total{provider="fake",status="503"} 2.0' in text
    assert "openfusion_synthesizer_first_token_seconds_count 1.0" in text  # the streamed one: the other is whole
    assert "openfusion_requests_in_flight 0.0" in text
    # The four calls that answered in each request (a, c, the judge, the synthesizer): 11 prompt and 7 completion
    # tokens each, added up per request.
    assert 'openfusion_tokens_total{kind="prompt"} 88.0' in text
    assert 'openfusion_tokens_total{kind="completion"} 56.0' in text
    assert "openfusion_overhead_seconds_bucket" in text


def test_error_codes_a_provider_makes_up_mid_stream_add_no_metrics_series(
    upstream: FakeUpstream, start_server: Any, activity_path: Path
) -> None:
    """An error event's `code` is the provider's to choose: one outside HTTP's statuses is counted as `other`, so
    /metrics does not grow by a series per code."""
    codes = [1000 + i for i in range(20)]
    for code in codes:
        upstream.script(f"code{code}", Script(chunks=["a"], error_event={"message": "boom", "code": code}))
    upstream.script("teapot", Script(chunks=["a"], error_event={"message": "boom", "code": 418}))
    with start_server(activity={"path": activity_path}) as url:
        for model in [*(f"fake/code{code}" for code in codes), "fake/teapot"]:
            body = {"model": model, "messages": HI, "stream": True}
            assert httpx.post(f"{url}{CHAT}", json=body, timeout=20).status_code == 200
        text = httpx.get(f"{url}/metrics").text

    errors = [line for line in text.splitlines() if line.startswith("openfusion_upstream_errors_total")]
    assert sorted(errors) == [
        'openfusion_upstream_errors_total{provider="fake",status="418"} 1.0',
        'openfusion_upstream_errors_total{provider="fake",status="other"} 20.0',
    ]


def test_json_logs_carry_the_generation_id(upstream: FakeUpstream, start_server: Any, activity_path: Path) -> None:
    import logging

    from openfusion.observability.logs import JsonFormatter

    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Capture()
    handler.setFormatter(JsonFormatter())
    logging.getLogger("openfusion").addHandler(handler)
    logging.getLogger("openfusion").setLevel(logging.INFO)
    try:
        with start_server(activity={"path": activity_path}, providers=[]) as url:  # no provider: a clear error
            upstream_key = "sk-provider-secret"
            response = httpx.post(f"{url}{CHAT}", json={"model": "fusion/trio", "messages": HI})
            ok = httpx.post(f"{url}{CHAT}", json={"model": "fake/plain", "messages": HI})
    finally:
        logging.getLogger("openfusion").removeHandler(handler)
    assert response.status_code == 404 and ok.status_code == 404
    finished = [json.loads(line) for line in lines if '"request finished"' in line]
    assert all(entry["generation_id"].startswith("gen-") for entry in finished)
    assert not any(upstream_key in line for line in lines)


def test_an_error_events_boolean_code_is_no_status_and_its_request_is_recorded_in_postgresql(
    upstream: FakeUpstream, make_settings: Any, postgres_url: str
) -> None:
    """`"code": true` in a provider's error event is no HTTP status: the call keeps none (it was kept as 1), and the
    request's record is written (PostgreSQL takes no boolean in its integer column: the record was lost)."""
    truthy = {"message": "boom", "code": True}
    upstream.script("truthy", Script(chunks=["a"], error_event=truthy))  # a pass-through's stream
    upstream.script("synth", Script(chunks=["a"], error_event=truthy))  # a fusion's synthesizer's stream
    environ = {"FAKE_KEY": "k", "DATABASE_URL": postgres_url}
    records = []
    with serve_in_thread(create_app(make_settings(), environ=environ)) as url:
        for model in ("fake/truthy", "fusion/trio"):
            body = {"model": model, "messages": HI, "stream": True}
            response = httpx.post(f"{url}{CHAT}", json=body, timeout=20)
            assert response.status_code == 200 and "boom" in response.text  # the error event came, mid-stream
            records.append(generation(url, response.headers["x-generation-id"], timeout=10))
    passthrough, fusion = records
    synth = next(c for c in fusion["calls"] if c["role"] == "synthesizer")
    assert [(c["status"], c["upstream_status"]) for c in (passthrough["calls"][0], synth)] == [("error", None)] * 2
    assert passthrough["status"] == "error" and fusion["status"] == "error"


def test_two_replicas_share_one_history_in_postgresql(
    upstream: FakeUpstream, make_settings: Any, postgres_url: str
) -> None:
    environ = {"FAKE_KEY": "k", "DATABASE_URL": postgres_url}
    first, second = (create_app(make_settings(), environ=environ) for _ in range(2))
    with serve_in_thread(first) as url_a, serve_in_thread(second) as url_b:
        gid = httpx.post(f"{url_a}{CHAT}", json={"model": "fusion/trio", "messages": HI}, timeout=20).headers[
            "x-generation-id"
        ]
        record = generation(url_b, gid)  # written by replica A, read through replica B
    assert record["id"] == gid and len(record["calls"]) == 5


def test_a_streamed_synthesis_is_recorded_as_ok(upstream: FakeUpstream, start_server: Any, activity_path: Path) -> None:
    with start_server(activity={"path": activity_path}) as url:
        for stream in (False, True):
            response = httpx.post(
                f"{url}{CHAT}", json={"model": "fusion/trio", "messages": HI, "stream": stream}, timeout=20
            )
            record = generation(url, response.headers["x-generation-id"])
            synth = next(c for c in record["calls"] if c["role"] == "synthesizer")
            assert synth["status"] == "ok" and synth["tokens_completion"] == 7, synth


def test_prices_refresh_from_a_providers_model_listing(
    upstream: FakeUpstream, start_server: Any, activity_path: Path, fake_upstream: Any
) -> None:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from openfusion.settings import ProviderConfig

    listing = {"data": [{"id": f"fake/{m}", "pricing": {"prompt": "0.001", "completion": "0.002"}}
                        for m in ("a", "b", "c", "judge", "synth")]}  # fmt: skip
    catalogue = Starlette(routes=[Route("/v1/models", lambda _: JSONResponse(listing))])
    _, fake_url = fake_upstream
    with serve_in_thread(catalogue) as catalogue_url:
        providers = [
            ProviderConfig(name="fake", base_url=f"{fake_url}/v1", models=["fake/*"], strip_prefix=True),
            ProviderConfig(name="catalogue", base_url=f"{catalogue_url}/v1", models=["catalogue/*"]),
        ]
        with start_server(activity={"path": activity_path}, providers=providers,
                          pricing={"refresh_from": "catalogue"}) as url:  # fmt: skip
            # The refresh runs in the background at start-up: until it lands, max_cost cannot be checked (402,
            # nothing spent); once it has, the same request runs.
            body = {"model": "fusion/trio", "messages": HI, "plugins": [{"id": "fusion", "max_cost": 100}]}

            def priced() -> bool:
                nonlocal response
                response = httpx.post(f"{url}{CHAT}", json=body, timeout=20)
                return response.status_code == 200

            response = httpx.Response(402)
            wait_until(priced, timeout=5)
            record = generation(url, response.headers["x-generation-id"])

    assert record["total_cost"] == pytest.approx(5 * (11 * 0.001 + 7 * 0.002))
    assert response.json()["fusion"]["estimated_max_cost"] is not None


def test_costs_are_summed_without_float_noise(upstream: FakeUpstream, start_server: Any, activity_path: Path) -> None:
    # 0.0001 + 0.0002 is 0.00030000000000000003 in floats: neither the response nor the record may show that.
    upstream.script("a", Script(content="A.", cost=0.0001))
    upstream.script("b", Script(content="B.", cost=0.0002))
    for model in ("c", "judge", "synth"):
        upstream.script(model, Script(content=json.dumps(ANALYSIS) if model == "judge" else "Fine.", cost=0.0))

    with start_server(activity={"path": activity_path}) as url:
        response = httpx.post(f"{url}{CHAT}", json={"model": "fusion/trio", "messages": HI}, timeout=20)
        record = generation(url, response.headers["x-generation-id"])
        page = httpx.get(f"{url}/activity/{response.headers['x-generation-id']}", timeout=10)

    assert response.status_code == 200, response.text
    assert response.json()["usage"]["cost"] == 0.0003 and '"cost":0.0003' in response.text.replace(" ", "")
    assert record["total_cost"] == 0.0003
    assert page.status_code == 200 and "$0.000300" in page.text and "0.00030000000000000003" not in page.text


def test_records_a_failing_store_loses_are_counted_as_dropped(
    upstream: FakeUpstream, start_server: Any, activity_path: Path
) -> None:
    """A store that refuses writes (an outage, a full disk) loses records: each is logged, and the gauge operators
    alert on counts it too, not only records dropped from a full queue."""
    with start_server(activity={"path": activity_path, "flush_interval_s": 0.05}) as url:
        first = httpx.post(f"{url}{CHAT}", json={"model": "fake/plain", "messages": HI})
        generation(url, first.headers["x-generation-id"])  # the store works
        with sqlite3.connect(activity_path) as db:  # from now on it refuses every generation, as a full disk would
            db.execute("CREATE TRIGGER refuse BEFORE INSERT ON generations BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        for _ in range(3):
            assert httpx.post(f"{url}{CHAT}", json={"model": "fake/plain", "messages": HI}).status_code == 200

        def counted() -> bool:
            return "openfusion_activity_dropped 3.0" in httpx.get(f"{url}/metrics").text

        wait_until(counted, timeout=10)
