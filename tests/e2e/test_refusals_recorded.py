"""Requests refused before they run (400, 402, 403, 404, 429) are recorded under the key's name, fusion and
pass-through alike; an unknown key (401) is not, and neither is a body that names no model."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx

from fakes.upstream import FakeUpstream, Script, wait_until

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]
ALICE = "sk-client-alice-7d2e4f9a"
KEYS = [
    {
        "name": "alice",
        "key_sha256": hashlib.sha256(ALICE.encode()).hexdigest(),
        "models": ["fusion/*", "fake/*"],
        "metrics": True,  # reads /metrics below
    }
]
PRICES = {"models": {f"fake/{m}": {"prompt": 1e-3, "completion": 1e-3} for m in ("a", "b", "c", "judge", "synth")}}


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


# (body, status, code): each refused before any upstream call.
REFUSALS: list[tuple[dict[str, Any], int, str]] = [
    ({"model": "fusion/trio", "messages": HI, "temperature": 5}, 400, "invalid_request"),
    ({"model": "fusion/trio", "messages": HI, "stream": True, "plugins": [{"id": "fusion", "max_tool_calls": 99}]},
     400, "invalid_request"),
    ({"model": "fusion/trio", "messages": HI, "plugins": [{"id": "fusion", "analysis_models": ["fusion"]}]},
     400, "fusion_recursion"),
    ({"model": "fusion/trio", "messages": "Hi"}, 400, "invalid_request"),
    ({"model": "fake/plain", "messages": HI, "metadata": nested(200)}, 400, "invalid_request"),
    ({"model": "fusion/nope", "messages": HI}, 404, "model_not_found"),
    ({"model": "fusion/trio", "messages": HI, "plugins": [{"id": "fusion", "max_cost": 0.0001}]},
     402, "max_cost_exceeded"),
    ({"model": "other/model", "messages": HI}, 403, "model_not_allowed"),
    ({"model": "fake/plain", "messages": []}, 400, "invalid_request"),
    ({"model": "fake/plain", "messages": HI, "n": "two"}, 400, "invalid_request"),
    ({"models": ["fake/plain"], "messages": HI, "stop": ["a"] * 5}, 400, "invalid_request"),
]  # fmt: skip


def listed(url: str, want: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The newest generations once at least `want` are recorded (the writer batches off the hot path)."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{url}/v1/activity", params={"limit": 200}, headers={"authorization": f"Bearer {ALICE}"})
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        if len(data) >= want or time.monotonic() > deadline:
            return data
        time.sleep(0.05)


def test_refused_requests_are_recorded_with_status_reason_and_key(
    upstream: FakeUpstream, start_server: Any, tmp_path: Path
) -> None:
    refusals = REFUSALS
    with start_server(activity={"path": tmp_path / "activity.sqlite3"}, keys=KEYS, pricing=PRICES) as url:
        auth = {"authorization": f"Bearer {ALICE}"}
        for body, status, code in refusals:
            response = httpx.post(f"{url}{CHAT}", json=body, headers=auth, timeout=20)
            assert response.status_code == status, (body, response.text)
            assert response.json()["error"]["code"] == code
        records = listed(url, len(refusals))
        metrics = httpx.get(f"{url}/metrics", headers=auth).text

    assert upstream.calls == []  # every one was refused before anything was sent
    assert len(records) == len(refusals)
    for record, (body, status, code) in zip(reversed(records), refusals, strict=True):  # newest first
        assert record["status"] == "error" and record["failure_reason"] == code, record
        assert record["status_code"] == status
        assert record["key_name"] == "alice"
        assert record["requested_model"] == body.get("model", (body.get("models") or [None])[0])
        assert record["streamed"] is (body.get("stream") is True)
    by_reason = {r["failure_reason"] for r in records}
    assert by_reason == {"invalid_request", "fusion_recursion", "model_not_found", "max_cost_exceeded",
                         "model_not_allowed"}  # fmt: skip
    assert next(r for r in records if r["failure_reason"] == "max_cost_exceeded")["preset"] == "trio"
    assert f'openfusion_requests_total{{route="refused",status="error"}} {len(refusals)}.0' in metrics
    assert "openfusion_requests_in_flight 0.0" in metrics


def test_unknown_keys_and_bodies_without_a_model_leave_no_record(
    upstream: FakeUpstream, start_server: Any, tmp_path: Path
) -> None:
    with start_server(activity={"path": tmp_path / "activity.sqlite3"}, keys=KEYS) as url:
        auth = {"authorization": f"Bearer {ALICE}"}
        stranger = httpx.post(f"{url}{CHAT}", json={"model": "fusion/trio", "messages": HI},
                              headers={"authorization": "Bearer sk-unknown"})  # fmt: skip
        nameless = [
            httpx.post(f"{url}{CHAT}", content=raw, headers={**auth, "content-type": "application/json"})
            for raw in (b"{not json", b"[1]", b'{"messages": []}', b'{"model": 7, "messages": []}',
                        b'{"model": "fake/\\u0000", "messages": []}')
        ]  # fmt: skip
        marker = httpx.post(f"{url}{CHAT}", json={"model": "fusion/nope", "messages": HI}, headers=auth)
        records = listed(url, 1)  # records queue in request order: once the last is written, all earlier are

    assert stranger.status_code == 401 and marker.status_code == 404
    assert [r.status_code for r in nameless] == [400] * 5
    # Only the marker: an unknown key has no name to file a record under, and a flood of them must not
    # become writes; a body naming no usable model has nothing to file it under (it is logged instead).
    assert [(r["requested_model"], r["failure_reason"]) for r in records] == [("fusion/nope", "model_not_found")]


def test_a_key_over_its_concurrency_limit_is_recorded(
    upstream: FakeUpstream, start_server: Any, tmp_path: Path
) -> None:
    upstream.script("a", Script(delay_s=30))  # holds the first run's slot until the client leaves
    keys = [{**KEYS[0], "max_concurrent_fusion": 1}]
    body = {"model": "fusion/trio", "messages": HI, "stream": True}
    with start_server(activity={"path": tmp_path / "activity.sqlite3"}, keys=keys) as url:
        auth = {"authorization": f"Bearer {ALICE}"}
        with httpx.stream("POST", f"{url}{CHAT}", json=body, headers=auth, timeout=20) as running:
            assert running.status_code == 200
            wait_until(lambda: bool(upstream.calls_for("a")), timeout=10)  # the run holds its slot
            refused = httpx.post(f"{url}{CHAT}", json=body, headers=auth, timeout=20)
        records = listed(url, 2)

    assert refused.status_code == 429 and refused.json()["error"]["code"] == "concurrency_limited"
    refusal = next(r for r in records if r["id"] == refused_id(records, running))
    assert refusal["failure_reason"] == "concurrency_limited" and refusal["key_name"] == "alice"
    assert refusal["streamed"] is True and refusal["preset"] == "trio" and refusal["status_code"] == 429
    held = next(r for r in records if r["id"] == running.headers["x-generation-id"])
    assert held["status"] == "cancelled" and held["status_code"] == 200  # its client left; the stream had begun


def refused_id(records: list[dict[str, Any]], running: httpx.Response) -> str:
    """The record that is not the run that held the slot."""
    return next(r["id"] for r in records if r["id"] != running.headers["x-generation-id"])


def test_every_record_keeps_the_http_status_its_client_got(
    upstream: FakeUpstream, start_server: Any, tmp_path: Path
) -> None:
    upstream.script("missing", Script(status=404))
    upstream.script("synth", Script(chunks=["a", "b", "c"], cut_stream_after=2))  # breaks off after its first bytes
    with start_server(activity={"path": tmp_path / "activity.sqlite3"}, keys=KEYS) as url:
        auth = {"authorization": f"Bearer {ALICE}"}
        answered = httpx.post(f"{url}{CHAT}", json={"model": "fake/plain", "messages": HI}, headers=auth)
        relayed = httpx.post(f"{url}{CHAT}", json={"model": "fake/missing", "messages": HI}, headers=auth)
        broken = httpx.post(f"{url}{CHAT}", json={"model": "fusion/trio", "messages": HI, "stream": True},
                            headers=auth, timeout=20)  # fmt: skip
        failed = httpx.post(f"{url}{CHAT}", json={"model": "fusion/trio", "messages": HI}, headers=auth, timeout=20)
        records = listed(url, 4)[::-1]  # oldest first: in request order
        page = httpx.get(f"{url}/activity/{relayed.headers['x-generation-id']}", auth=("alice", ALICE)).text

    assert (answered.status_code, relayed.status_code, broken.status_code, failed.status_code) == (200, 404, 200, 502)
    assert [r["id"] for r in records[:3]] == [r.headers["x-generation-id"] for r in (answered, relayed, broken)]
    assert [(r["status"], r["status_code"]) for r in records] == [
        ("ok", 200),
        ("error", 404),  # the provider's status, relayed
        ("error", 200),  # the stream had begun: its status line was 200
        ("error", 502),
    ]
    assert "<span>HTTP status</span>404" in page
