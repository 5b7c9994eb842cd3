"""Resilience: deadlines, quorum, fallbacks, cancellation, and a fault × stage matrix through the real server."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from e2e.processes import post_and_leave
from fakes.upstream import FakeUpstream, Script, wait_until

from .conftest import ANALYSIS

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]
# Short stage limits so every fault resolves quickly; the matrix asserts outcomes, not speed.
OUR_TASKS = ("panel:", "keepalive", "disconnect-watch", "response-body")


def fusion(url: str, *, stream: bool = False, timeout: float = 20, **plugin: Any) -> httpx.Response:
    body = {"model": "fusion/trio", "messages": HI, "stream": stream, "plugins": [{"id": "fusion", **plugin}]}
    return httpx.post(f"{url}{CHAT}", json=body, timeout=timeout)


def stream_payloads(response: httpx.Response) -> list[Any]:
    lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
    return [json.loads(line[6:]) if line != "data: [DONE]" else "[DONE]" for line in lines]


def test_a_hung_panelist_is_cut_at_the_panel_deadline(upstream: FakeUpstream, server: str) -> None:
    upstream.script("a", Script(delay_s=30))

    started = time.monotonic()
    response = fusion(server, panel_deadline_s=0.5)
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    panel = response.json()["fusion"]["panel"]
    assert panel[0]["status"] == "error" and panel[0]["error"]["code"] == "timeout"
    assert [p["status"] for p in panel[1:]] == ["ok", "ok"]
    assert elapsed < 10  # bounded by the deadline, not by the 30 s panelist
    wait_until(lambda: upstream.calls_for("a")[0].disconnected)  # the straggler's call was closed


def test_the_deadline_waits_for_the_quorum(upstream: FakeUpstream, server: str) -> None:
    upstream.script("a", Script(delay_s=30))
    upstream.script("b", Script(delay_s=1.0))

    response = fusion(server, panel_deadline_s=0.2, min_successful=2)

    panel = response.json()["fusion"]["panel"]
    assert [p["status"] for p in panel] == ["error", "ok", "ok"]  # waited past the deadline for b, not for a


def test_too_few_answers_is_insufficient_quorum(upstream: FakeUpstream, server: str) -> None:
    upstream.script("c", Script(status=500))

    response = fusion(server, min_successful=3)

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "insufficient_quorum"


def test_min_successful_above_the_panel_size_is_400(server: str) -> None:
    response = fusion(server, min_successful=4)
    assert response.status_code == 400 and response.json()["error"]["param"] == "plugins[0].min_successful"


def test_judge_fallback_is_tried_then_reported(upstream: FakeUpstream, server: str) -> None:
    upstream.script("judge", Script(status=500))
    upstream.script("judge2", Script(content=json.dumps(ANALYSIS)))

    response = fusion(server, judge_fallbacks=["fake/judge2"], expose=True)

    judge = response.json()["fusion"]["judge"]
    assert judge["model"] == "fake/judge2" and judge["status"] == "ok"
    assert judge["fallbacks"][0]["model"] == "fake/judge"
    assert judge["fallbacks"][0]["failure_reason"] == "judge_upstream_error"
    assert response.json()["fusion"]["analysis"] == ANALYSIS


def test_a_failed_judge_chain_degrades_to_synthesis(upstream: FakeUpstream, server: str) -> None:
    upstream.script("judge", Script(status=500))
    upstream.script("judge2", Script(delay_s=5))

    response = fusion(server, judge_fallbacks=["fake/judge2"], judge_timeout_s=0.3)

    assert response.status_code == 200
    judge = response.json()["fusion"]["judge"]
    assert judge["status"] == "error" and "judge_timeout_s" in judge["error"]
    assert response.json()["choices"][0]["message"]["content"] == "Answer from synth."


@pytest.mark.parametrize("stream", [False, True])
def test_synthesizer_fallback_before_the_first_byte(upstream: FakeUpstream, server: str, stream: bool) -> None:
    upstream.script("synth", Script(delay_s=5))
    upstream.script("synth2", Script(content="From the fallback."))

    response = fusion(server, stream=stream, synthesis_fallbacks=["fake/synth2"], synth_timeout_s=0.3)

    if stream:
        payloads = stream_payloads(response)
        text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads[:-1] if p["choices"])
        report = payloads[-2]["fusion"]
    else:
        text = response.json()["choices"][0]["message"]["content"]
        report = response.json()["fusion"]
    assert text == "From the fallback."
    assert report["synthesizer"]["model"] == "fake/synth2"
    assert "synth_timeout_s" in report["synthesizer"]["fallbacks"][0]["error"]


def test_a_client_that_does_not_stream_gets_the_next_synthesizer_when_one_fails_midway(
    upstream: FakeUpstream, server: str
) -> None:
    """Such a client gets the answer whole, so the synthesizer is asked for it whole: one cut off partway is
    replaced by the next synthesizer's answer, where a stream already relayed could only end in an error."""
    upstream.script("synth", Script(chunks=["par", "tial"], cut_stream_after=1))
    upstream.script("synth2", Script(content="From the fallback."))

    response = fusion(server, synthesis_fallbacks=["fake/synth2"])

    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "From the fallback."
    cut = upstream.calls_for("synth")
    assert cut and {call.fault for call in cut} == {"cut"}  # the fault happened, on a whole answer
    assert not any(call.stream for call in cut + upstream.calls_for("synth2"))
    report = response.json()["fusion"]["synthesizer"]
    assert report["model"] == "fake/synth2" and report["fallbacks"][0]["model"] == "fake/synth"


def test_a_streaming_client_gets_the_synthesizers_tokens_as_they_come(upstream: FakeUpstream, server: str) -> None:
    upstream.script("synth", Script(chunks=["one ", "two ", "three"]))

    response = fusion(server, stream=True)

    text = "".join(
        p["choices"][0]["delta"].get("content") or "" for p in stream_payloads(response)[:-1] if p["choices"]
    )
    assert text == "one two three"
    assert [call.stream for call in upstream.calls_for("synth")] == [True]


def test_models_fallback_for_pass_through(upstream: FakeUpstream, server: str) -> None:
    upstream.script("x", Script(status=503))
    upstream.script("y", Script(content="y answered", response_model="y-1"))
    body = {"model": "fake/x", "models": ["fake/x", "fake/y"], "messages": HI}

    response = httpx.post(f"{server}{CHAT}", json=body)
    streamed = httpx.post(f"{server}{CHAT}", json={**body, "stream": True})
    alone = httpx.post(f"{server}{CHAT}", json={"models": ["fake/x", "fake/y"], "messages": HI})

    assert response.status_code == 200 and response.json()["model"] == "y-1"
    assert "y answered" in "".join(
        p["choices"][0]["delta"].get("content") or "" for p in stream_payloads(streamed)[:-1] if p["choices"]
    )
    assert alone.json()["choices"][0]["message"]["content"] == "y answered"
    assert all("models" not in call.body for call in upstream.calls)  # the list is ours, not the provider's


def test_the_last_fallback_error_is_returned(upstream: FakeUpstream, server: str) -> None:
    upstream.script("x", Script(status=503))
    upstream.script("y", Script(status=400, error_message="y says no"))

    response = httpx.post(f"{server}{CHAT}", json={"model": "fake/x", "models": ["fake/y"], "messages": HI})

    assert response.status_code == 400 and response.json()["error"]["message"] == "y says no"


@pytest.mark.parametrize("route", ["fusion", "passthrough"])
def test_a_non_streamed_client_that_leaves_cancels_the_upstream_calls(
    upstream: FakeUpstream, start_probed_server: Any, route: str
) -> None:
    for model in ("a", "b", "c", "plain"):
        upstream.script(model, Script(delay_s=30))
    model = "fusion/trio" if route == "fusion" else "fake/plain"

    calls = 3 if route == "fusion" else 1
    with start_probed_server() as (url, probe):
        # The client leaves once every upstream call is out (they take 30 s), not after a fixed time.
        post_and_leave(f"{url}{CHAT}", {"model": model, "messages": HI}, lambda: len(upstream.calls) == calls)
        wait_until(lambda: all(c.disconnected for c in upstream.calls))
        assert len(upstream.calls) == calls
        wait_until(lambda: not [n for n in probe.task_names() if n.startswith(OUR_TASKS)])


# ---- the fault matrix: every fault at every stage, streamed and not -----------------------------

FAULTS: dict[str, dict[str, Any]] = {
    "429": {"status": 429, "retry_after": "0"},
    "5xx": {"status": 500},
    "402": {"status": 402},
    "timeout": {"delay_s": 1.5},
    "hang": {"delay_s": 60},
    "reset": {"reset": True},
    "malformed": {"raw_body": b"{not json"},
    "cut": {"chunks": ["par", "tial"], "cut_stream_after": 1},
    "drip": {"chunks": ["d", "r", "i", "p"], "chunk_interval_s": 0.1},
}
STAGE_MODEL = {"panel": "a", "judge": "judge", "synth": "synth", "passthrough": "plain"}
# What the fake records on a call once it has put the fault in its answer; a delay shows instead as the
# caller hanging up (`disconnected`). Streamed or not, every call sees its fault: a whole answer is cut
# midway or dripped in pieces too.
FAULT_RECORDS = {
    "429": "status 429",
    "5xx": "status 500",
    "402": "status 402",
    "reset": "reset",
    "malformed": "raw body",
    "cut": "cut",
    "drip": "drip",
}
SLOW_ONLY = {"drip"}  # slow, but whole: every stage still answers


def _stage_limit(stage: str, fault: str) -> dict[str, float]:
    """A short time limit for the faulted stage alone, where its fault is a delay. Every other stage keeps its
    default: on a busy machine a healthy stage may take longer than half a second, and a limit firing there
    would be a second fault."""
    return {f"{stage}_timeout_s": 0.5} if fault in ("timeout", "hang") else {}


def _expected_panel_code(fault: str) -> str | None:
    return {
        "timeout": "timeout",
        "hang": "timeout",
        "reset": "upstream_unreachable",
        "cut": "upstream_unreachable",
        "malformed": "upstream_invalid_response",
    }.get(fault)


def _assert_the_fault_happened(upstream: FakeUpstream, model: str, fault: str) -> None:
    calls = upstream.calls_for(model)
    assert calls, f"{model} was never called: the fault was not reached"
    if fault in FAULT_RECORDS:
        assert {call.fault for call in calls} == {FAULT_RECORDS[fault]}, [call.fault for call in calls]
    else:  # a delay: the caller gave up waiting (its time limit), every time it asked
        wait_until(lambda: all(call.disconnected for call in upstream.calls_for(model)))


def _check(stage: str, fault: str, stream: bool, response: httpx.Response) -> None:
    if stage == "passthrough":
        _check_passthrough(fault, stream, response)
        return
    if stage in ("panel", "judge") or fault in SLOW_ONLY:
        assert response.status_code == 200, response.text
        if stream:
            payloads = stream_payloads(response)
            assert payloads[-1] == "[DONE]" and "fusion" in payloads[-2], payloads[-2]
            report = payloads[-2]["fusion"]
        else:
            report = response.json()["fusion"]
        if fault in SLOW_ONLY:
            assert all(p["status"] == "ok" for p in report["panel"]) and report["judge"]["status"] == "ok"
        elif stage == "panel":
            failed = report["panel"][0]
            assert failed["status"] == "error", failed
            assert failed["error"].get("status_code") == FAULTS[fault].get("status")
            if _expected_panel_code(fault):
                assert failed["error"]["code"] == _expected_panel_code(fault)
        else:
            assert report["judge"]["status"] == "error"
            assert report["judge"]["failure_reason"] == "judge_upstream_error"
        return
    # The synthesizer failed (streamed upstream for a streaming client, asked for a whole answer otherwise).
    if stream:
        assert response.status_code == 200
        payloads = stream_payloads(response)
        assert payloads[-1] == "[DONE]"
        assert payloads[-2]["choices"][0]["finish_reason"] == "error" and payloads[-2]["error"]["message"]
        if fault == "cut":
            assert "par" in "".join(
                p["choices"][0]["delta"].get("content") or "" for p in payloads[:-2] if p["choices"]
            )
    else:
        assert response.status_code in (502, 504), response.text
        assert response.json()["error"]["message"]


def _check_passthrough(fault: str, stream: bool, response: httpx.Response) -> None:
    status = FAULTS[fault].get("status")
    if status:
        assert response.status_code == status  # the provider's status, relayed
        assert response.json()["error"]["message"]
    elif fault in ("timeout", "hang") and stream:
        # The provider sent its headers, then went silent: the stream we relay ends with an error chunk.
        assert response.status_code == 200 and '"code":"upstream_timeout"' in response.text
        assert response.text.rstrip().endswith("data: [DONE]")
    elif fault in ("timeout", "hang"):
        assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
    elif fault == "reset":
        # Streamed too: the fake's status line (not labelled an event stream) came before the drop, but a stream not
        # labelled as one is judged by its first bytes, and none came: nothing was relayed, the client gets a status.
        assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_unreachable"
    elif fault == "malformed" and stream:
        # Bytes that end no event are not relayed (a client could read nothing of them): the stream, which never
        # finished, is our error chunk alone.
        assert response.status_code == 200 and b"not json" not in response.content
        assert response.content.startswith(b"data: {")
        assert '"code":"upstream_invalid_response"' in response.text
        assert response.text.rstrip().endswith("data: [DONE]")
    elif fault == "malformed":  # a 200 no client could parse is no answer: a 502, not relayed as a success
        assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_invalid_response"
    elif fault == "cut" and stream:
        assert response.status_code == 200 and '"finish_reason":"error"' in response.text
    elif fault == "cut":  # read whole before relaying: a body cut short is retried, then a 502
        assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_unreachable"
    elif stream:  # dripped: relayed whole
        assert (
            response.status_code == 200
            and "".join(
                p["choices"][0]["delta"].get("content") or "" for p in stream_payloads(response)[:-1] if p["choices"]
            )
            == "drip"
        )
    else:
        assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "drip"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("stage", list(STAGE_MODEL))
def test_fault_matrix(upstream: FakeUpstream, start_probed_server: Any, stage: str, fault: str, stream: bool) -> None:
    script = dict(FAULTS[fault])
    if stage == "judge":
        script.setdefault("content", json.dumps(ANALYSIS))
    upstream.script(STAGE_MODEL[stage], Script(**script))
    settings = {
        "retry": {"max_attempts": 2, "initial_backoff_s": 0, "max_backoff_s": 0},
        "http": {"read_timeout_s": 1.0},
    }

    with start_probed_server(**settings) as (url, probe):
        started = time.monotonic()
        if stage == "passthrough":
            response = httpx.post(
                f"{url}{CHAT}", json={"model": "fake/plain", "messages": HI, "stream": stream}, timeout=20
            )
        else:
            response = fusion(url, stream=stream, **_stage_limit(stage, fault))
        assert time.monotonic() - started < 15  # bounded: no fault may hang the request
        _assert_the_fault_happened(upstream, STAGE_MODEL[stage], fault)
        _check(stage, fault, stream, response)
        # Nothing is left behind: no task of ours on the server loop, no upstream call still open.
        wait_until(lambda: not [n for n in probe.task_names() if n.startswith(OUR_TASKS)])
        wait_until(lambda: all(c.finished is not None or c.disconnected for c in upstream.calls))


def test_a_retry_after_beyond_the_cap_returns_the_429_at_once(upstream: FakeUpstream, server: str) -> None:
    upstream.script("plain", Script(status=429, retry_after="3600", error_message="slow down"))

    response = httpx.post(f"{server}{CHAT}", json={"model": "fake/plain", "messages": HI}, timeout=10)

    assert response.status_code == 429 and response.headers["retry-after"] == "3600"
    assert len(upstream.calls_for("plain")) == 1  # not waited for, not retried


@pytest.mark.parametrize("stream", [False, True])
def test_an_sdk_retrying_a_request_gets_one_upstream_attempt_per_retry(
    upstream: FakeUpstream, server: str, stream: bool
) -> None:
    """The SDK's retries and openfusion's do not multiply: its retries (x-stainless-retry-count > 0) get one
    attempt per upstream call, its first attempt openfusion's usual three."""
    upstream.script("x", Script(status=503, error_message="overloaded"))
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=2)

    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fake/x", messages=HI, stream=stream)  # type: ignore[call-overload]

    calls = upstream.calls_for("x")
    assert len(calls) == 3 + 1 + 1, [call.headers.get("x-stainless-retry-count") for call in calls]


def test_a_fusion_request_retried_by_its_client_calls_each_panelist_once(upstream: FakeUpstream, server: str) -> None:
    upstream.script("a", Script(status=503))
    first = httpx.post(f"{server}{CHAT}", json={"model": "fusion/trio", "messages": HI})
    assert first.status_code == 200 and len(upstream.calls_for("a")) == 3
    retried = httpx.post(
        f"{server}{CHAT}", json={"model": "fusion/trio", "messages": HI}, headers={"x-stainless-retry-count": "1"}
    )
    assert retried.status_code == 200
    assert len(upstream.calls_for("a")) == 3 + 1
    assert [len(upstream.calls_for(m)) for m in ("b", "c")] == [2, 2]


def test_a_failed_panel_names_each_model_once(upstream: FakeUpstream, server: str) -> None:
    for model in ("a", "b", "c"):
        upstream.script(model, Script(status=400, error_message=f"{model} refuses"))
    response = fusion(server)
    assert response.status_code == 502, response.text
    message = response.json()["error"]["message"]
    assert "fake/a (fake) returned HTTP 400: a refuses" in message
    for model in ("fake/a", "fake/b", "fake/c"):
        assert message.count(model) == 1, message
