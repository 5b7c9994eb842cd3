"""Overall time limits: an upstream that trickles filler or hangs cannot hold a request beyond its limits."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from fakes.upstream import FakeUpstream, Script, wait_until

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]
# A short limit per attempt, many attempts allowed: only the limits can end these requests early.
LIMITS: dict[str, Any] = {
    "http": {"call_timeout_s": 1.0},
    "retry": {"max_attempts": 10, "deadline_s": 2.5, "initial_backoff_s": 0, "max_backoff_s": 0},
}


def post(url: str, body: dict[str, Any]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(f"{url}{CHAT}", json=body, timeout=60)
    return response, time.monotonic() - started


def payloads(response: httpx.Response) -> list[Any]:
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def test_a_non_streamed_answer_that_trickles_spaces_is_cut(upstream: FakeUpstream, start_server: Any) -> None:
    upstream.script("plain", Script(trickle_s=0.2))

    with start_server(**LIMITS) as url:
        response, elapsed = post(url, {"model": "fake/plain", "messages": HI})

    assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
    assert "http.call_timeout_s" in response.json()["error"]["message"] or "retry.deadline_s" in response.text
    calls = upstream.calls_for("plain")
    assert calls[0].trickled >= 3  # the fault: bytes kept coming, each within any read timeout
    assert 2 <= len(calls) <= 3  # attempts of 1 s each, within the 2.5 s deadline
    assert elapsed < 10
    wait_until(lambda: all(call.disconnected for call in upstream.calls_for("plain")))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_hung_pass_through_is_bounded_by_the_retry_deadline(
    upstream: FakeUpstream, start_server: Any, stream: bool
) -> None:
    upstream.script("plain", Script(delay_s=60, headers_first=False))

    with start_server(**LIMITS) as url:
        response, elapsed = post(url, {"model": "fake/plain", "messages": HI, "stream": stream})

    assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
    calls = upstream.calls_for("plain")
    assert all(call.finished is None or call.disconnected for call in calls)  # the fault: no answer ever began
    assert 2 <= len(calls) <= 3  # not the 10 attempts allowed: the deadline ended them
    assert elapsed < 10
    assert "retry.deadline_s" in response.json()["error"]["message"]


def test_a_retry_after_past_the_deadline_is_not_waited_for(upstream: FakeUpstream, start_server: Any) -> None:
    upstream.script("plain", Script(status=429, retry_after="5"))

    with start_server(**LIMITS) as url:
        response, elapsed = post(url, {"model": "fake/plain", "messages": HI})

    assert response.status_code == 429 and len(upstream.calls_for("plain")) == 1
    assert elapsed < 4


def test_a_pass_through_stream_that_only_sends_comments_is_cut(upstream: FakeUpstream, start_server: Any) -> None:
    upstream.script("plain", Script(chunks=["first "], trickle_s=0.2))

    with start_server(**LIMITS) as url:
        response, elapsed = post(url, {"model": "fake/plain", "messages": HI, "stream": True})

    assert response.status_code == 200 and "first " in response.text
    events = payloads(response)
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "upstream_timeout"
    assert events[-2]["choices"][0]["finish_reason"] == "error"
    call = upstream.calls_for("plain")[0]
    assert call.trickled >= 3  # the fault: comments kept the connection busy
    assert elapsed < 10
    wait_until(lambda: call.disconnected)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_synthesizer_that_only_sends_comments_after_its_first_token_is_cut(
    upstream: FakeUpstream, start_server: Any, stream: bool
) -> None:
    upstream.script("synth", Script(chunks=["first "], trickle_s=0.2))

    with start_server(**LIMITS) as url:
        response, elapsed = post(url, {"model": "fusion/trio", "messages": HI, "stream": stream})

    if stream:
        assert response.status_code == 200 and '"content":"first "' in response.text
        events = payloads(response)
        assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "upstream_timeout"
    else:
        assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
    call = upstream.calls_for("synth")[0]
    assert call.trickled >= 3  # the fault: the synthesizer's first token came, then only comments
    assert elapsed < 10
    wait_until(lambda: call.disconnected)


def test_a_stream_that_keeps_making_progress_is_not_cut(upstream: FakeUpstream, start_server: Any) -> None:
    upstream.script("plain", Script(chunks=["tick "] * 8, chunk_interval_s=0.4))  # 2.8 s: past both limits

    with start_server(**LIMITS) as url:
        response, _ = post(url, {"model": "fake/plain", "messages": HI, "stream": True})

    assert response.status_code == 200 and '"error"' not in response.text
    assert response.text.count("tick ") == 8 and response.text.endswith("data: [DONE]\n\n")
