"""Daily spend caps under concurrency: each request reserves its worst case before anything is sent.

Against the real server: requests fired together, a real activity store (SQLite; PostgreSQL shared
by two replicas reserving in the real Redis), and a fake upstream whose answers cost exactly what
their estimate says, so the cap must hold to the cent.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fakes.anthropic_api import FakeAnthropic, Reply
from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, Script, wait_until
from openfusion.settings import ProviderConfig

from .conftest import ANALYSIS, REDIS_URL, bearer, chat_body

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]
KEY = "sk-capped-team-0123456789"
ADMIN = "sk-auditor-0123456789abc"
ENVIRON = {"CAPPED_KEY": KEY, "AUDIT_KEY": ADMIN}
CHAT = "/v1/chat/completions"
CENT = 0.01  # USD per completion token of the priced models below: 10 tokens cost $0.10
# Ten completion tokens at most, and the fake answers with exactly ten: each request costs its estimate.
FULL = {"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50}


def capped(cap: float, **extra: Any) -> dict[str, Any]:
    return {
        "keys": [
            {"name": "capped", "key_env": "CAPPED_KEY", "daily_spend_usd": cap, **extra},
            {"name": "auditor", "key_env": "AUDIT_KEY", "admin": True},
        ]
    }


def pricing(**completion: float) -> dict[str, Any]:
    """Free prompts; completion prices per model (USD per token); every fake model priced."""
    prices = {m: 0.0 for m in ("a", "b", "c", "judge", "synth")} | completion
    return {"models": {f"fake/{m}": {"prompt": 0.0, "completion": p, "max_completion_tokens": 1000}
                       for m, p in prices.items()}}  # fmt: skip


def fire(url: str, body: dict[str, Any] | list[dict[str, Any]], *, count: int) -> list[httpx.Response]:
    """`count` requests at once (several URLs: round robin), each on its own connection."""
    urls = [url] if isinstance(url, str) else url

    def post(i: int) -> httpx.Response:
        return httpx.post(f"{urls[i % len(urls)]}{CHAT}", json=body, headers=bearer(KEY), timeout=30)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(post, range(count)))


def spent(url: str, *, records: int) -> float:
    """Today's recorded cost of the capped key, once its `records` generations are in the store."""

    def listed() -> list[dict[str, Any]]:
        body = httpx.get(f"{url}/v1/activity", params={"limit": 200}, headers=bearer(ADMIN)).json()
        # Refusals are recorded too (as errors that cost nothing): the requests that ran are the ones served.
        return [g for g in body["data"] if g["key_name"] == "capped" and g["status"] == "ok"]

    wait_until(lambda: len(listed()) >= records, timeout=15)
    generations = listed()
    assert len(generations) == records
    return sum(g["total_cost"] for g in generations)


def codes(responses: list[httpx.Response]) -> list[int]:
    return sorted(r.status_code for r in responses)


def test_concurrent_requests_cannot_spend_past_the_cap(upstream: FakeUpstream, serve: Serve, tmp_path: Path) -> None:
    upstream.script("a", Script(delay_s=3.0, usage=FULL))  # all six are in flight together
    upstream.script("b", Script(usage={"prompt_tokens": 40, "completion_tokens": 5, "total_tokens": 45}))
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    body = chat_body("fake/a", max_tokens=10)  # worst case: 10 tokens x $0.01 = $0.10
    with serve(capped(0.35), environ=ENVIRON, activity=activity, pricing=pricing(a=CENT, b=CENT)) as (url, _):
        responses = fire(url, body, count=6)
        assert codes(responses) == [200, 200, 200, 429, 429, 429], [r.text for r in responses]
        refused = [r for r in responses if r.status_code == 429]
        for response in refused:
            assert response.json()["error"]["code"] == "spend_limited"
            # Held by requests in flight, not spent yet: worth asking again soon.
            assert int(response.headers["retry-after"]) <= 2
            assert "$0.35" in response.json()["error"]["message"]
        assert spent(url, records=3) == pytest.approx(0.30)  # at most the cap: three of $0.10 within $0.35
        # Settled: the spend is in the store now, and one more would pass the cap, until midnight.
        again = httpx.post(f"{url}{CHAT}", json=body, headers=bearer(KEY), timeout=30)
        assert again.status_code == 429 and int(again.headers["retry-after"]) > 60
        # A smaller request still fits what is left, to the cent.
        small = httpx.post(f"{url}{CHAT}", json=chat_body("fake/b", max_tokens=5), headers=bearer(KEY), timeout=30)
        assert small.status_code == 200
        assert spent(url, records=4) == pytest.approx(0.35)
    assert len(upstream.calls_for("a")) == 3


def test_images_given_by_url_cannot_spend_past_the_cap(upstream: FakeUpstream, serve: Serve, tmp_path: Path) -> None:
    """An image URL is ~40 characters of the body and ~2,000 prompt tokens at the provider: reserved by its length,
    ten such requests at once all got in and spent four times the cap."""
    scan = {"prompt_tokens": 2000, "completion_tokens": 0, "total_tokens": 2000}  # a large image, as billed
    upstream.script("a", Script(delay_s=1.0, usage=scan))
    question = [{"type": "text", "text": "Read this."},
                {"type": "image_url", "image_url": {"url": "https://example.com/scan.png"}}]  # fmt: skip
    body = {"model": "fake/a", "max_tokens": 10, "messages": [{"role": "user", "content": question}]}
    prices = {"models": {"fake/a": {"prompt": 1e-5, "completion": 0.0, "max_completion_tokens": 1000}}}
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    with serve(capped(0.10), environ=ENVIRON, activity=activity, pricing=prices) as (url, _):
        responses = fire(url, body, count=10)
        served = sum(r.status_code == 200 for r in responses)
        assert {r.status_code for r in responses} <= {200, 429}, [r.text for r in responses]
        assert 1 <= served < 10
        assert spent(url, records=served) <= 0.10  # each one $0.02: held to the cap


@pytest.mark.parametrize("stream", [False, True])
def test_concurrent_fusion_runs_across_two_replicas_hold_one_cap(
    upstream: FakeUpstream, serve: Serve, postgres_url: str, redis_prefix: str, stream: bool
) -> None:
    for model in "abc":
        upstream.script(model, Script(delay_s=2.0))
    upstream.script("judge", Script(content=json.dumps(ANALYSIS)))
    upstream.script("synth", Script(usage=FULL))
    access = {**capped(0.25), "redis_url": REDIS_URL, "limits": {"redis_prefix": redis_prefix}}
    environ = {**ENVIRON, "DATABASE_URL": postgres_url}
    settings = {"activity": {"flush_interval_s": 0.05}, "pricing": pricing(synth=CENT)}
    body = chat_body("fusion/trio", max_tokens=10, stream=stream)  # only the synthesizer is paid: $0.10 at most
    with (
        serve(access, environ=environ, **settings) as (url_a, _),
        serve(access, environ=environ, **settings) as (
            url_b,
            _,
        ),
    ):
        responses = fire([url_a, url_b], body, count=6)
        assert codes(responses) == [200, 200, 429, 429, 429, 429], [r.text for r in responses]
        assert spent(url_b, records=2) == pytest.approx(0.20)  # within $0.25, whichever replica served them
    assert len(upstream.calls_for("synth")) == 2


def test_a_cost_that_stays_unknown_keeps_its_estimate_counted(
    upstream: FakeUpstream, serve: Serve, tmp_path: Path
) -> None:
    # A relayed stream that carries no usage (the client did not ask for it): its cost stays unknown, and so it
    # counts at its worst case.
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    body = chat_body("fake/a", max_tokens=10, stream=True)
    with serve(capped(0.15), environ=ENVIRON, activity=activity, pricing=pricing(a=CENT)) as (url, _):
        first = httpx.post(f"{url}{CHAT}", json=body, headers=bearer(KEY), timeout=30)
        assert first.status_code == 200 and first.text.rstrip().endswith("[DONE]")
        # The store counts nothing for it; the cap counts its $0.10, so another $0.10 no longer fits.
        assert_counted_at_its_estimate(url, first.headers["x-generation-id"], status="ok", body=body)
    assert len(upstream.calls_for("a")) == 1


@pytest.mark.parametrize(
    ("body", "param", "named"),
    [
        (chat_body("fake/unpriced", max_tokens=10), "model", "fake/unpriced"),
        (chat_body("fake/a", models=["fake/unpriced"], max_tokens=10), "models[0]", "fake/unpriced"),
        (
            chat_body("fake/a", max_tokens=10, tools=[{"type": "openrouter:fusion",
                      "parameters": {"analysis_models": ["fake/b", "fake/unpriced"]}}]),
            "tools[0].parameters.analysis_models[1]",
            "fake/unpriced",
        ),
        (chat_body("fake/windowless"), "max_tokens", "fake/windowless"),  # nothing bounds its output
    ],
)  # fmt: skip
def test_a_cost_a_cap_cannot_bound_is_refused_before_anything_is_sent(
    upstream: FakeUpstream, serve: Serve, tmp_path: Path, body: dict[str, Any], param: str, named: str
) -> None:
    prices = pricing(a=CENT)
    prices["models"]["fake/windowless"] = {"prompt": 0.0, "completion": CENT}
    activity = {"path": str(tmp_path / "activity.sqlite3")}
    with serve(capped(1.0), environ=ENVIRON, activity=activity, pricing=prices) as (url, _):
        response = httpx.post(f"{url}{CHAT}", json=body, headers=bearer(KEY), timeout=30)
        assert response.status_code == 402, response.text
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("cost_unbounded", param)
        assert named in error["message"] and "daily spend cap" in error["message"]
        assert upstream.calls == []  # refused before anything was sent
        # A key without a cap is not asked for a bound.
        assert httpx.post(f"{url}{CHAT}", json=body, headers=bearer(ADMIN), timeout=30).status_code == 200


def test_a_reservation_is_given_back_when_the_request_is_refused_later(
    upstream: FakeUpstream, serve: Serve, tmp_path: Path
) -> None:
    for model in "abc":
        upstream.script(model, Script(delay_s=2.0))
    upstream.script("judge", Script(content=json.dumps(ANALYSIS)))
    upstream.script("synth", Script(usage=FULL))
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    body = chat_body("fusion/trio", max_tokens=10)  # $0.10 at most, and the synthesizer bills exactly that
    access = capped(0.25, max_concurrent_fusion=1)
    with serve(access, environ=ENVIRON, activity=activity, pricing=pricing(synth=CENT)) as (url, app):
        book = app.state.access.spend
        results: list[httpx.Response] = []
        running = threading.Thread(
            target=lambda: results.append(httpx.post(f"{url}{CHAT}", json=body, headers=bearer(KEY), timeout=30))
        )
        running.start()
        wait_until(lambda: len(upstream.calls_for("a")) == 1, timeout=10)  # admitted, its panel at work
        # Refused after reserving: no fusion slot free (429), or over its own max_cost (402).
        no_slot = httpx.post(f"{url}{CHAT}", json={**body, "max_tokens": 5}, headers=bearer(KEY), timeout=30)
        assert no_slot.status_code == 429 and no_slot.json()["error"]["code"] == "concurrency_limited"
        running.join()
        wait_until(lambda: app.state.access.limiter.held("key:capped") == 0, timeout=5)  # its slot given back
        # Its cost in the store first: a reading of today's spend that starts before a record is written and
        # ends after counts that cost twice for the moment (never zero times), which could refuse with 429.
        assert results[0].status_code == 200 and spent(url, records=1) == pytest.approx(0.10)
        tight = {**body, "max_tokens": 7, "plugins": [{"id": "fusion", "max_cost": 0.01}]}
        over_cost = httpx.post(f"{url}{CHAT}", json=tight, headers=bearer(KEY), timeout=30)
        assert over_cost.status_code == 402 and over_cost.json()["error"]["code"] == "max_cost_exceeded"
        # Neither refused request holds anything (given back once its response is out): only the finished
        # one's $0.10 counts (in the store).
        wait_until(lambda: abs(book.held("key:capped") - 0.10) < 1e-9, timeout=5)
        assert httpx.post(f"{url}{CHAT}", json=body, headers=bearer(KEY), timeout=30).status_code == 200


def test_an_answer_lost_on_its_way_and_retried_keeps_its_estimate_counted(
    upstream: FakeUpstream, serve: Serve, tmp_path: Path
) -> None:
    """A 200 whose body is cut off was generated, so billed, though nobody read its usage: the call retried after it
    has an unknown cost, counted at its estimate, not at what the last attempt alone reports (which let the cap be
    overshot by every billed attempt before it)."""
    half = {"prompt_tokens": 40, "completion_tokens": 5, "total_tokens": 45}  # $0.05 an attempt; $0.10 for both
    upstream.script("a", Script(content="one two", usage=half, cut_stream_after=1), Script(content="one", usage=half))
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    body = chat_body("fake/a", max_tokens=10)  # its estimate: $0.10
    retry = {"max_attempts": 2, "initial_backoff_s": 0}
    with serve(capped(0.15), environ=ENVIRON, activity=activity, pricing=pricing(a=CENT), retry=retry) as (url, _):
        first = httpx.post(f"{url}{CHAT}", json=body, headers=bearer(KEY), timeout=30)
        assert first.status_code == 200 and first.json()["choices"][0]["message"]["content"] == "one"
        # $0.10 counted, not the $0.05 reported: another $0.10 no longer fits (the two attempts spent $0.10 already).
        assert_counted_at_its_estimate(url, first.headers["x-generation-id"], status="ok", body=body)
    assert [call.fault for call in upstream.calls_for("a")] == ["cut", None]  # the fault happened, then the retry


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_key_at_its_cap_still_gets_its_cached_answers(
    upstream: FakeUpstream, serve: Serve, tmp_path: Path, stream: bool
) -> None:
    """A hit spends nothing, so it needs no room under the cap: it is not refused for the worst case of a run it will
    not make (a new question still is)."""
    upstream.script("judge", Script(content=json.dumps(ANALYSIS)))
    upstream.script("synth", Script(usage=FULL))  # $0.10, the estimate
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    body = chat_body("fusion/trio", max_tokens=10, stream=stream, plugins=[{"id": "fusion", "cache": {"ttl_s": 60}}])
    with serve(capped(0.15), environ=ENVIRON, activity=activity, pricing=pricing(synth=CENT)) as (url, app):
        first = httpx.post(f"{url}{CHAT}", json=body, headers=bearer(KEY), timeout=30)
        assert first.status_code == 200 and first.headers["x-openfusion-cache"] == "miss"
        assert spent(url, records=1) == pytest.approx(0.10)  # another $0.10 run no longer fits under $0.15
        again = httpx.post(f"{url}{CHAT}", json=body, headers=bearer(KEY), timeout=30)
        assert again.status_code == 200, again.text
        assert again.headers["x-openfusion-cache"] == "hit"
        record = recorded_generation(url, again.headers["x-generation-id"])
        assert (record["cache_hit"], record["total_cost"]) == (True, 0)
        assert app.state.access.spend.held("key:capped") == pytest.approx(0.10)  # the first run's, nothing more
        other = {**body, "messages": [{"role": "user", "content": "Hi again"}]}
        refused = httpx.post(f"{url}{CHAT}", json=other, headers=bearer(KEY), timeout=30)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "spend_limited"
    assert len(upstream.calls_for("synth")) == 1


def assert_counted_at_its_estimate(url: str, generation: str, *, status: str, body: dict[str, Any]) -> None:
    """The generation is recorded with `status` and an unknown cost, and the cap still counts its estimate: the same
    request again ($0.10 more, under a $0.15 cap) is refused."""
    record = recorded_generation(url, generation)
    assert (record["status"], record["total_cost"]) == (status, None)
    again = httpx.post(f"{url}{CHAT}", json=body, headers=bearer(KEY), timeout=30)
    assert again.status_code == 429 and again.json()["error"]["code"] == "spend_limited", again.text


def recorded_generation(url: str, generation: str) -> dict[str, Any]:
    """The generation's record, once the writer has stored it."""
    found: list[dict[str, Any]] = []

    def stored() -> bool:
        detail = httpx.get(f"{url}/api/v1/generation", params={"id": generation}, headers=bearer(ADMIN))
        found[:] = [detail.json()["data"]] if detail.status_code == 200 else []
        return bool(found)

    wait_until(stored, timeout=10)
    return found[0]


def test_a_pass_through_stream_the_client_leaves_keeps_its_estimate_counted(
    upstream: FakeUpstream, serve: Serve, tmp_path: Path
) -> None:
    """The provider bills what it generated whether or not the client read it: a stream left mid-way has an unknown
    cost, counted at its estimate, never at $0 (which let a capped key spend without limit by leaving early)."""
    upstream.script("a", Script(chunks=["one ", "two ", "three ", "four ", "five ", "six"], chunk_interval_s=0.3,
                                usage=FULL))  # fmt: skip
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    body = chat_body("fake/a", max_tokens=10, stream=True)
    with serve(capped(0.15), environ=ENVIRON, activity=activity, pricing=pricing(a=CENT)) as (url, _):
        with httpx.stream("POST", f"{url}{CHAT}", json=body, headers=bearer(KEY), timeout=30) as left:
            assert left.status_code == 200
            lines = left.iter_lines()
            read = [line for line, _ in zip(lines, range(4), strict=False)]
            generation = left.headers["x-generation-id"]
        assert any("one" in line for line in read)
        wait_until(lambda: upstream.calls_for("a")[0].disconnected, timeout=10)  # the client did leave early
        assert_counted_at_its_estimate(url, generation, status="cancelled", body=body)
    assert len(upstream.calls_for("a")) == 1


def test_a_stream_that_ends_in_a_provider_error_event_keeps_its_estimate_counted(
    upstream: FakeUpstream, serve: Serve, tmp_path: Path
) -> None:
    """An error event with an HTTP-like code after part of the answer is no refusal: the provider may bill what it
    sent, so the cost is unknown, not $0."""
    upstream.script("a", Script(chunks=["one ", "two "], error_event={"code": 502, "message": "provider died"}))
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    body = chat_body("fake/a", max_tokens=10, stream=True)
    with serve(capped(0.15), environ=ENVIRON, activity=activity, pricing=pricing(a=CENT)) as (url, _):
        failed = httpx.post(f"{url}{CHAT}", json=body, headers=bearer(KEY), timeout=30)
        assert failed.status_code == 200 and "provider died" in failed.text
        assert_counted_at_its_estimate(url, failed.headers["x-generation-id"], status="error", body=body)
    assert len(upstream.calls_for("a")) == 1


def test_a_pass_through_stream_that_reports_its_usage_costs_what_it_reports(
    upstream: FakeUpstream, serve: Serve, tmp_path: Path
) -> None:
    """The usage chunk a streamed answer ends with (`stream_options.include_usage`) is read as the relay ends: the
    record has its tokens and cost, and the cap counts that, not the worst case (which locked capped keys out after a
    few cheap streams)."""
    upstream.script(
        "a", Script(chunks=["Blue."], usage={"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42})
    )
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    body = chat_body("fake/a", max_tokens=10, stream=True, stream_options={"include_usage": True})
    with serve(capped(0.15), environ=ENVIRON, activity=activity, pricing=pricing(a=CENT)) as (url, _):
        first = httpx.post(f"{url}{CHAT}", json=body, headers=bearer(KEY), timeout=30)
        assert first.status_code == 200 and '"completion_tokens":2' in first.text.replace(" ", "")
        record = recorded_generation(url, first.headers["x-generation-id"])
        assert (record["tokens_prompt"], record["tokens_completion"]) == (40, 2)
        assert record["total_cost"] == pytest.approx(2 * CENT)
        # $0.02 spent and $0.10 of worst case fit under $0.15; counted at its own worst case, it would not.
        second = httpx.post(f"{url}{CHAT}", json=body, headers=bearer(KEY), timeout=30)
        assert second.status_code == 200, second.text
    assert len(upstream.calls_for("a")) == 2


def test_a_bound_a_max_tokens_only_server_would_ignore_is_sent_as_max_tokens(
    upstream: FakeUpstream, serve: Serve, core_settings: dict[str, Any], tmp_path: Path
) -> None:
    """Older servers (the built-in deepseek, mistral, together, ollama: `max_tokens_field = "max_tokens"`) ignore
    `max_completion_tokens`: passed through as sent, a client's bound did not hold, and a cap's estimate counted a
    1-token answer for one billed at the server's own limit."""
    [fake] = core_settings["providers"]
    old = fake.model_copy(update={"name": "old", "models": ["old/*"], "max_tokens_field": "max_tokens"})
    prices = pricing(a=CENT)
    prices["models"]["old/a"] = prices["models"]["fake/a"]
    upstream.script("a", Script(content="Hi.", usage={"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}))
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    with serve(capped(0.05), environ=ENVIRON, activity=activity, pricing=prices, providers=[fake, old]) as (url, _):
        bounded = httpx.post(f"{url}{CHAT}", json=chat_body("old/a", max_completion_tokens=1), headers=bearer(KEY))
        assert bounded.status_code == 200, bounded.text
        # Both bounds set: the estimate takes the larger ($0.10, past the cap), since the provider honours either.
        both = chat_body("fake/a", max_completion_tokens=1, max_tokens=10)
        refused = httpx.post(f"{url}{CHAT}", json=both, headers=bearer(KEY))
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "spend_limited", refused.text
    [sent] = upstream.calls_for("a")
    assert sent.body.get("max_tokens") == 1 and "max_completion_tokens" not in sent.body


@pytest.mark.parametrize(
    "bulk",
    [
        {"functions": [{"name": "lookup", "description": "x" * 3000, "parameters": {"type": "object"}}]},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "s", "description": "x" * 3000}}},
    ],
    ids=["functions", "response_format"],
)
def test_prompt_outside_the_messages_counts_in_the_estimate(
    upstream: FakeUpstream, serve: Serve, tmp_path: Path, bulk: dict[str, Any]
) -> None:
    """Pass-through sends every field, and a provider bills a long schema as prompt: an estimate of the messages and
    tools alone let one request spend several times a cap."""
    prices = pricing()
    prices["models"]["fake/a"] = {"prompt": 1e-4, "completion": 0.0, "max_completion_tokens": 1000}
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    with serve(capped(0.05), environ=ENVIRON, activity=activity, pricing=prices) as (url, _):
        small = httpx.post(f"{url}{CHAT}", json=chat_body("fake/a", max_tokens=10), headers=bearer(KEY))
        assert small.status_code == 200, small.text
        bulky = httpx.post(f"{url}{CHAT}", json=chat_body("fake/a", max_tokens=10, **bulk), headers=bearer(KEY))
        assert bulky.status_code == 429 and bulky.json()["error"]["code"] == "spend_limited", bulky.text
    assert len(upstream.calls_for("a")) == 1


FUSION_TOOL = {"type": "openrouter:fusion", "parameters": {"preset": "duo", "max_completion_tokens": 10, "tools": []}}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, {**chat_body("fusion/duo", max_tokens=10), "plugins": [{"id": "fusion", "max_completion_tokens": 10}]}),
        (CHAT, chat_body("fake/outer", max_tokens=10, tools=[FUSION_TOOL])),
        ("/v1/messages", chat_body("fake/outer", max_tokens=10, tools=[FUSION_TOOL])),
    ],
    ids=["slug", "tool-mode", "tool-mode-messages"],
)
def test_a_short_question_reserves_the_prompts_openfusion_adds(
    upstream: FakeUpstream, serve: Serve, tmp_path: Path, path: str, body: dict[str, Any]
) -> None:
    """The judge's instructions and schema, the synthesizer's instructions and the fusion function are prompt the
    providers bill: a reservation of the question alone let many short requests each spend several times theirs."""
    per_token = 1e-3
    price = {"prompt": per_token, "completion": per_token, "max_completion_tokens": 10}
    prices = {"models": {f"fake/{m}": price for m in ("a", "b", "judge", "outer")}}
    call = {"function": {"name": "fusion", "arguments": json.dumps({"prompt": "Hi"})}}
    upstream.script("outer", Script(tool_calls=[call]), Script(content="Done."))
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    with serve(capped(100.0), environ=ENVIRON, activity=activity, pricing=prices) as (url, _):
        response = httpx.post(f"{url}{path}", json=body, headers=bearer(KEY), timeout=30)
    assert response.status_code == 200, response.text
    reserved = response.json()["fusion"]["estimated_max_cost"]
    # What was sent, at the estimate's own rate for the client's text (3 characters a token), each call's output
    # at its limit: the worst case must cover it.
    sent = 0
    for sent_call in upstream.calls:
        prompt = {
            key: sent_call.body[key] for key in ("messages", "tools", "response_format") if sent_call.body.get(key)
        }
        sent += math.ceil(len(json.dumps(prompt, separators=(",", ":"))) / 3) + 10
    assert len(upstream.calls) >= 4  # the panel, the judge, and the answer (the outer model twice in tool mode)
    assert reserved >= sent * per_token, (reserved, sent * per_token)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_native_messages_cache_write_is_spent_at_its_premium(
    serve: Serve, core_settings: dict[str, Any], anthropic_native: tuple[FakeAnthropic, str], tmp_path: Path,
    stream: bool,
) -> None:  # fmt: skip
    """Anthropic bills a prompt written to its cache at 1.25 times the input price and one read from it at a tenth:
    priced as plain input, writes under-counted the key's spend, and a key at its cap still got in."""
    fake, fake_url = anthropic_native
    usage = {"input_tokens": 10, "cache_creation_input_tokens": 800, "cache_read_input_tokens": 100,
             "output_tokens": 4}  # fmt: skip
    fake.replies = [Reply(usage=usage)]
    claude = ProviderConfig(name="claude", base_url=f"{fake_url}/v1", api_key_env="FAKE_KEY", models=["claude/*"],
                            strip_prefix=True, messages=True)  # fmt: skip
    price = {"prompt": 1e-4, "completion": 0.0, "input_cache_read": 1e-5, "input_cache_write": 1.25e-4}
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    body = {"model": "claude/opus", "max_tokens": 10, "stream": stream, "messages": [{"role": "user", "content": "Hi"}],
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]}  # fmt: skip
    headers = {**bearer(KEY), "anthropic-version": "2023-06-01"}
    with serve(capped(0.10), environ=ENVIRON, activity=activity, pricing={"models": {"claude/opus": price}},
               providers=[*core_settings["providers"], claude]) as (url, _):  # fmt: skip
        first = httpx.post(f"{url}/v1/messages", json=body, headers=headers, timeout=30)
        assert first.status_code == 200, first.text
        record = recorded_generation(url, first.headers["x-generation-id"])
        assert (record["tokens_prompt"], record["tokens_completion"]) == (910, 4)
        # 10 plain, 800 written, 100 read: $0.102, not the $0.091 of 910 plain input tokens.
        assert record["total_cost"] == pytest.approx(10 * 1e-4 + 800 * 1.25e-4 + 100 * 1e-5)
        assert spent(url, records=1) == pytest.approx(0.102)
        # The key spent past its $0.10 cap: the next request is refused, not let in under $0.091 spent.
        again = httpx.post(f"{url}/v1/messages", json=body, headers=headers, timeout=30)
        assert again.status_code == 429 and again.json()["error"]["type"] == "rate_limit_error", again.text
    assert len(fake.calls) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_native_messages_reported_cost_wins_over_the_price_table(
    serve: Serve, core_settings: dict[str, Any], anthropic_native: tuple[FakeAnthropic, str], tmp_path: Path,
    stream: bool,
) -> None:  # fmt: skip
    """OpenRouter's Messages endpoint reports what it billed (`usage.cost`): that is the cost, as on the other
    surfaces, whatever the price table would make of the tokens."""
    fake, fake_url = anthropic_native
    fake.replies = [Reply(usage={"input_tokens": 10, "cache_creation_input_tokens": 800, "output_tokens": 4,
                                 "cost": 0.0425})]  # fmt: skip
    claude = ProviderConfig(name="claude", base_url=f"{fake_url}/v1", api_key_env="FAKE_KEY", models=["claude/*"],
                            strip_prefix=True, messages=True)  # fmt: skip
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    body = {"model": "claude/opus", "max_tokens": 10, "stream": stream, "messages": [{"role": "user", "content": "Hi"}]}
    prices = {"models": {"claude/opus": {"prompt": 1e-4, "completion": 0.0}}}
    with serve(capped(1.0), environ=ENVIRON, activity=activity, pricing=prices,
               providers=[*core_settings["providers"], claude]) as (url, _):  # fmt: skip
        answer = httpx.post(f"{url}/v1/messages", json=body, headers={**bearer(KEY), "anthropic-version": "2023-06-01"},
                            timeout=30)  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert recorded_generation(url, answer.headers["x-generation-id"])["total_cost"] == pytest.approx(0.0425)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_native_responses_cache_read_is_spent_at_its_discount(
    upstream: FakeUpstream, serve: Serve, core_settings: dict[str, Any], fake_upstream: tuple[FakeUpstream, str],
    tmp_path: Path, stream: bool,
) -> None:  # fmt: skip
    """OpenAI bills input read from its prompt cache at a discount (`input_tokens_details.cached_tokens`, counted
    in `input_tokens`): priced as plain input, a key's spend counted it at full price and its cap closed early."""
    usage = {"prompt_tokens": 1000, "completion_tokens": 0, "total_tokens": 1000,
             "prompt_tokens_details": {"cached_tokens": 800}}  # fmt: skip
    upstream.script("gpt", Script(content="Blue.", usage=usage))
    native = ProviderConfig(name="native", base_url=f"{fake_upstream[1]}/v1", api_key_env="FAKE_KEY",
                            models=["native/*"], strip_prefix=True, responses=True)  # fmt: skip
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    prices = {"models": {"native/gpt": {"prompt": 1e-4, "completion": 0.0, "input_cache_read": 1e-5}}}
    body = {"model": "native/gpt", "input": "Hi", "max_output_tokens": 16, "stream": stream}
    with serve(capped(1.0), environ=ENVIRON, activity=activity, pricing=prices,
               providers=[*core_settings["providers"], native]) as (url, _):  # fmt: skip
        answer = httpx.post(f"{url}/v1/responses", json=body, headers=bearer(KEY), timeout=30)
        assert answer.status_code == 200, answer.text
        record = recorded_generation(url, answer.headers["x-generation-id"])
    assert record["tokens_prompt"] == 1000
    assert record["total_cost"] == pytest.approx(200 * 1e-4 + 800 * 1e-5)  # $0.028, not $0.10


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_native_responses_cache_write_is_spent_at_its_premium(
    upstream: FakeUpstream, serve: Serve, core_settings: dict[str, Any], fake_upstream: tuple[FakeUpstream, str],
    tmp_path: Path, stream: bool,
) -> None:  # fmt: skip
    """A provider speaking the Responses API that bills prompt-cache writes (Anthropic's models through OpenRouter)
    reports them in `input_tokens_details.cache_write_tokens`, counted in `input_tokens`: read as plain input, a write
    was spent at the input price rather than 1.25 times it, and a key past its cap still got in. Asked with the openai
    SDK, as a client of this surface asks."""
    usage = {"prompt_tokens": 910, "completion_tokens": 4, "total_tokens": 914,
             "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 800}}  # fmt: skip
    upstream.script("claude", Script(content="Blue.", usage=usage))
    native = ProviderConfig(name="native", base_url=f"{fake_upstream[1]}/v1", api_key_env="FAKE_KEY",
                            models=["native/*"], strip_prefix=True, responses=True)  # fmt: skip
    price = {"prompt": 1e-4, "completion": 0.0, "input_cache_read": 1e-5, "input_cache_write": 1.25e-4}
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    with (
        serve(capped(0.10), environ=ENVIRON, activity=activity, pricing={"models": {"native/claude": price}},
              providers=[*core_settings["providers"], native]) as (url, _),
        openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0) as client,
    ):  # fmt: skip
        raw = client.responses.with_raw_response.create(model="native/claude", input="Hi", max_output_tokens=16,
                                                         stream=stream)  # fmt: skip
        if stream:
            events = list(raw.parse())
            assert events[-1].type == "response.completed", events[-1]
            answer = events[-1].response
        else:
            answer = raw.parse()
        assert answer.output_text == "Blue."
        assert answer.usage is not None and answer.usage.input_tokens == 910  # the provider's usage, relayed
        assert answer.usage.input_tokens_details.model_dump()["cache_write_tokens"] == 800  # the fault: writes billed
        record = recorded_generation(url, raw.headers["x-generation-id"])
        assert (record["tokens_prompt"], record["tokens_completion"]) == (910, 4)
        # 10 plain, 800 written, 100 read: $0.102, not the $0.082 of 810 tokens at the input price and 100 read.
        assert record["total_cost"] == pytest.approx(10 * 1e-4 + 800 * 1.25e-4 + 100 * 1e-5)
        assert spent(url, records=1) == pytest.approx(0.102)
        # The key spent past its $0.10 cap: the next request is refused, not let in under $0.082 spent.
        with pytest.raises(openai.RateLimitError) as refused:
            client.responses.create(model="native/claude", input="Hi", max_output_tokens=16, stream=stream)
        assert refused.value.code == "spend_limited", refused.value.body
    assert [call.path for call in upstream.calls] == ["/v1/responses"]  # relayed as sent, not translated


ONE_HOUR = {"type": "ephemeral", "ttl": "1h"}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_native_messages_one_hour_cache_write_is_spent_at_twice_the_input_price(
    serve: Serve, core_settings: dict[str, Any], anthropic_native: tuple[FakeAnthropic, str], tmp_path: Path,
    stream: bool,
) -> None:  # fmt: skip
    """Anthropic bills a 1-hour cache write at twice the input price (a 5-minute one at 1.25 times) and reports the
    split in `cache_creation`: priced as 5-minute writes, the key's spend was under-counted by a third of them and a
    key past its cap still got in."""
    fake, fake_url = anthropic_native
    usage = {"input_tokens": 10, "cache_creation_input_tokens": 800, "cache_read_input_tokens": 0, "output_tokens": 4,
             "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 600}}  # fmt: skip
    fake.replies = [Reply(usage=usage)]
    claude = ProviderConfig(name="claude", base_url=f"{fake_url}/v1", api_key_env="FAKE_KEY", models=["claude/*"],
                            strip_prefix=True, messages=True)  # fmt: skip
    # No 1-hour price configured: twice the prompt price, as Anthropic bills it.
    price = {"prompt": 1e-4, "completion": 0.0, "input_cache_write": 1.25e-4}
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    body = {"model": "claude/opus", "max_tokens": 10, "stream": stream, "messages": [{"role": "user", "content": "Hi"}],
            "system": [{"type": "text", "text": "Be brief.", "cache_control": ONE_HOUR}]}  # fmt: skip
    headers = {**bearer(KEY), "anthropic-version": "2023-06-01"}
    with serve(capped(0.14), environ=ENVIRON, activity=activity, pricing={"models": {"claude/opus": price}},
               providers=[*core_settings["providers"], claude]) as (url, _):  # fmt: skip
        first = httpx.post(f"{url}/v1/messages", json=body, headers=headers, timeout=30)
        assert first.status_code == 200, first.text
        record = recorded_generation(url, first.headers["x-generation-id"])
        assert (record["tokens_prompt"], record["tokens_completion"]) == (810, 4)
        # 10 plain, 200 written for 5 minutes, 600 for an hour: $0.146, not the $0.101 of 800 5-minute writes.
        assert record["total_cost"] == pytest.approx(10 * 1e-4 + 200 * 1.25e-4 + 600 * 2e-4)
        assert spent(url, records=1) == pytest.approx(0.146)
        # Past its $0.14 cap: the next request is refused, not let in under $0.101 spent.
        again = httpx.post(f"{url}/v1/messages", json=body, headers=headers, timeout=30)
        assert again.status_code == 429 and again.json()["error"]["type"] == "rate_limit_error", again.text
    assert len(fake.calls) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    ("message_cache", "write_price"),
    [(ONE_HOUR, 2e-4), ({"type": "ephemeral"}, 1.25e-4), (None, 2e-4)],
    ids=["hour-only", "mixed", "hour-on-system-only"],
)
def test_a_native_messages_cache_write_without_its_split_is_spent_at_the_lifetime_asked_for(
    serve: Serve, core_settings: dict[str, Any], anthropic_native: tuple[FakeAnthropic, str], tmp_path: Path,
    stream: bool, message_cache: dict[str, str] | None, write_price: float,
) -> None:  # fmt: skip
    """A usage without `cache_creation` (a provider or gateway that reports only `cache_creation_input_tokens`) does
    not say which writes are kept for an hour. A request that asked for 1-hour writes only made 1-hour writes: priced
    as 5-minute ones, the key's spend was under-counted by a third of them. Asked for both, which is which is not
    known: they stay 5-minute ones."""
    fake, fake_url = anthropic_native
    fake.replies = [Reply(usage={"input_tokens": 10, "cache_creation_input_tokens": 800, "output_tokens": 4})]
    claude = ProviderConfig(name="claude", base_url=f"{fake_url}/v1", api_key_env="FAKE_KEY", models=["claude/*"],
                            strip_prefix=True, messages=True)  # fmt: skip
    price = {"prompt": 1e-4, "completion": 0.0, "input_cache_write": 1.25e-4}  # 1-hour: twice the prompt price
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    block: dict[str, Any] = {"type": "text", "text": "Hi"}
    if message_cache is not None:
        block["cache_control"] = message_cache
    body = {"model": "claude/opus", "max_tokens": 10, "stream": stream,
            "messages": [{"role": "user", "content": [block]}],
            "system": [{"type": "text", "text": "Be brief.", "cache_control": ONE_HOUR}]}  # fmt: skip
    headers = {**bearer(KEY), "anthropic-version": "2023-06-01"}
    with serve(capped(1.0), environ=ENVIRON, activity=activity, pricing={"models": {"claude/opus": price}},
               providers=[*core_settings["providers"], claude]) as (url, _):  # fmt: skip
        answer = httpx.post(f"{url}/v1/messages", json=body, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        record = recorded_generation(url, answer.headers["x-generation-id"])
        assert record["total_cost"] == pytest.approx(10 * 1e-4 + 800 * write_price)
        assert spent(url, records=1) == pytest.approx(10 * 1e-4 + 800 * write_price)


@pytest.mark.parametrize("cap", [5.0, None], ids=["capped", "uncapped"])
def test_a_chat_cache_write_reported_without_its_split_is_spent_at_the_one_hour_price_when_only_that_was_asked(
    upstream: FakeUpstream, serve: Serve, core_settings: dict[str, Any], tmp_path: Path, cap: float | None
) -> None:
    """A chat usage reports `prompt_tokens_details.cache_write_tokens` with no 1-hour share: after a request whose
    every `cache_control` asks for an hour, they are 1-hour writes (twice the input price), without a `ttl` 5-minute
    ones (1.25 times). Under a cap the request was read for its worst case already; without one, it is read when its
    cost is."""
    usage = {"prompt_tokens": 1000, "completion_tokens": 0, "total_tokens": 1000,
             "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 800}}  # fmt: skip
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    prices = {"models": {"fake/claude": {"prompt": 1e-4, "completion": 0.0}}}

    def body(cache_control: dict[str, str]) -> dict[str, Any]:
        part = {"type": "text", "text": "Be brief.", "cache_control": cache_control}
        return {"model": "fake/claude", "max_tokens": 10, "messages": [{"role": "system", "content": [part]},
                                                                        {"role": "user", "content": "Hi"}]}  # fmt: skip

    access = (
        capped(5.0)
        if cap is not None
        else {
            "keys": [
                {"name": "capped", "key_env": "CAPPED_KEY"},
                {"name": "auditor", "key_env": "AUDIT_KEY", "admin": True},
            ]
        }
    )
    with serve(access, environ=ENVIRON, activity=activity, pricing=prices) as (url, _):
        costs = []
        for cache_control in (ONE_HOUR, {"type": "ephemeral"}):
            upstream.script("claude", Script(content="Blue.", usage=usage))
            answer = httpx.post(f"{url}{CHAT}", json=body(cache_control), headers=bearer(KEY), timeout=30)
            assert answer.status_code == 200, answer.text
            costs.append(recorded_generation(url, answer.headers["x-generation-id"])["total_cost"])
    assert costs == [pytest.approx(200 * 1e-4 + 800 * 2e-4), pytest.approx(200 * 1e-4 + 800 * 1.25e-4)]


def test_a_native_messages_request_asking_for_one_hour_cache_writes_reserves_them_at_twice_the_input_price(
    serve: Serve, core_settings: dict[str, Any], anthropic_native: tuple[FakeAnthropic, str], tmp_path: Path
) -> None:
    """Any prompt may be written to the cache, so the worst case prices each prompt token at the dearest write price
    the request can incur: with `ttl: "1h"` asked for, a 1-hour write at twice the input price, not a 5-minute one."""
    from openfusion.api.messages.request import parse_request, translate
    from openfusion.pipeline.budget import prompt_tokens_upper_bound

    fake, fake_url = anthropic_native
    claude = ProviderConfig(name="claude", base_url=f"{fake_url}/v1", api_key_env="FAKE_KEY", models=["claude/*"],
                            strip_prefix=True, messages=True)  # fmt: skip
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    system = "You answer questions about the grid. " * 80

    def body(cache_control: dict[str, str]) -> dict[str, Any]:
        return {"model": "claude/opus", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}],
                "system": [{"type": "text", "text": system, "cache_control": cache_control}]}  # fmt: skip

    asked = body(ONE_HOUR)
    tokens = prompt_tokens_upper_bound(translate(parse_request(asked), asked).chat)
    prompt = 1e-5
    cap = tokens * prompt * 1.6  # above the worst case at 1.25 times the prompt price, below it at twice
    price = {"prompt": prompt, "completion": 0.0}
    headers = {**bearer(KEY), "anthropic-version": "2023-06-01"}
    with serve(capped(cap), environ=ENVIRON, activity=activity, pricing={"models": {"claude/opus": price}},
               providers=[*core_settings["providers"], claude]) as (url, _):  # fmt: skip
        refused = httpx.post(f"{url}/v1/messages", json=asked, headers=headers, timeout=30)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert fake.calls == []  # refused before anything was sent
        five_minutes = httpx.post(f"{url}/v1/messages", json=body({"type": "ephemeral"}), headers=headers, timeout=30)
        assert five_minutes.status_code == 200, five_minutes.text
    assert len(fake.calls) == 1


def test_a_native_responses_request_asking_for_one_hour_cache_writes_reserves_them_at_twice_the_input_price(
    upstream: FakeUpstream, serve: Serve, core_settings: dict[str, Any], fake_upstream: tuple[FakeUpstream, str],
    tmp_path: Path,
) -> None:  # fmt: skip
    """As on Messages: a Responses request's `cache_control` with `ttl: "1h"` (on an input item's content part) goes
    to a provider that speaks the Responses API as sent, so its worst case prices each prompt token at the 1-hour
    write's twice the input price, not at 1.25 times."""
    from openfusion.api.responses.request import parse_request
    from openfusion.api.responses.translation import translate
    from openfusion.pipeline.budget import prompt_tokens_upper_bound

    upstream.script("claude", Script(content="Blue."))
    native = ProviderConfig(name="native", base_url=f"{fake_upstream[1]}/v1", api_key_env="FAKE_KEY",
                            models=["native/*"], strip_prefix=True, responses=True)  # fmt: skip
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    text = "You answer questions about the grid. " * 80

    def body(cache_control: dict[str, str]) -> dict[str, Any]:
        part = {"type": "input_text", "text": text, "cache_control": cache_control}
        return {"model": "native/claude", "max_output_tokens": 10,
                "input": [{"role": "user", "content": [part, {"type": "input_text", "text": "Hi"}]}]}  # fmt: skip

    asked = body(ONE_HOUR)
    tokens = prompt_tokens_upper_bound(translate(parse_request(asked), raw=asked).chat)
    prompt = 1e-5
    cap = tokens * prompt * 1.6  # above the worst case at 1.25 times the prompt price, below it at twice
    price = {"prompt": prompt, "completion": 0.0}
    with serve(capped(cap), environ=ENVIRON, activity=activity, pricing={"models": {"native/claude": price}},
               providers=[*core_settings["providers"], native]) as (url, _):  # fmt: skip
        refused = httpx.post(f"{url}/v1/responses", json=asked, headers=bearer(KEY), timeout=30)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert upstream.calls == []  # refused before anything was sent
        five_minutes = httpx.post(f"{url}/v1/responses", json=body({"type": "ephemeral"}), headers=bearer(KEY),
                                  timeout=30)  # fmt: skip
        assert five_minutes.status_code == 200, five_minutes.text
    assert len(upstream.calls) == 1
    assert upstream.calls[0].body["input"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}  # as sent


BRAVE_KEY = "brave-subscription-token-0123456789"


def _brave(request: Request) -> Response:
    """Brave's web search API, as the brave backend reads it."""
    results = [{"title": "Grid report", "url": "https://example.org/grid", "description": "Curtailment fell."}]
    return JSONResponse({"query": {"original": request.query_params.get("q")}, "web": {"results": results}})


@pytest.fixture(scope="module")
def brave() -> Iterator[str]:
    with serve_in_thread(Starlette(routes=[Route("/res/v1/web/search", _brave)])) as url:
        yield url


def search_call(query: str) -> dict[str, Any]:
    return {"function": {"name": "web_search", "arguments": {"query": query}}}


def test_paid_searches_are_spent_and_reserved_under_a_cap(upstream: FakeUpstream, serve: Serve, tmp_path: Path,
                                                          brave: str) -> None:  # fmt: skip
    """A panelist's research searches through a paid backend (Brave, Tavily, Exa), billed per query: priced nowhere,
    a capped key's research spent money its cap never saw, in its record or its worst case."""
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    # No price configured: Brave's list price, $5 per 1,000 searches.
    research = {"search": {"backend": "brave", "base_url": brave}, "fetch": {"enabled": False}}
    environ = {**ENVIRON, "BRAVE_API_KEY": BRAVE_KEY}
    lone = {"id": "fusion", "analysis_models": ["fake/a"], "max_tool_calls": 2, "judge_tools": False}
    body = chat_body("fusion/trio", max_tokens=10, plugins=[lone])  # every model free: two searches at $0.005 at most
    with serve(capped(0.015), environ=environ, activity=activity, pricing=pricing(), research=research) as (url, _):
        # The whole trio researching, its judge too: 4 tool calls each, up to $0.08 of searches, over the cap.
        wide = httpx.post(f"{url}{CHAT}", json=chat_body("fusion/trio", max_tokens=10), headers=bearer(KEY), timeout=30)
        assert wide.status_code == 429 and wide.json()["error"]["code"] == "spend_limited", wide.text
        assert upstream.calls == []  # refused before anything was sent
        upstream.script("a", Script(tool_calls=[search_call("grid curtailment")]),
                        Script(tool_calls=[search_call("curtailment 2025")]), Script(content="It fell."))  # fmt: skip
        answer = httpx.post(f"{url}{CHAT}", json=body, headers=bearer(KEY), timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["server_tool_use_details"]["web_search_requests"] == 2
        assert answer.json()["usage"]["cost"] == pytest.approx(0.01)
        assert recorded_generation(url, answer.headers["x-generation-id"])["total_cost"] == pytest.approx(0.01)
        # $0.01 spent: another run that may search twice no longer fits under $0.015.
        again = httpx.post(f"{url}{CHAT}", json=body, headers=bearer(KEY), timeout=30)
        assert again.status_code == 429 and again.json()["error"]["code"] == "spend_limited", again.text
    assert len(upstream.calls_for("a")) == 3
