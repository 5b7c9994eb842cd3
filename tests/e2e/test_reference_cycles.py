"""A finished request leaves nothing of openfusion's to the garbage collector: reference counting frees it all.

An object caught in a reference cycle lives until a collection finds it, and the server makes young collections rare
(`settle_heap`). A streamed response's keep-alive timer named itself through its closure; the cycle kept the request's
context (its trace, every call of it) after the response. A failed upstream call did the same through the frames that
held its error, the request's payload among them.
"""

from __future__ import annotations

import gc
import types
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fakes.upstream import FakeUpstream, Script, wait_until

HI = [{"role": "user", "content": "Hi"}]
CHAT = "/v1/chat/completions"
FUSION = {"model": "fusion/trio", "messages": HI}
REQUESTS = [
    (CHAT, {**FUSION, "stream": True}),
    (CHAT, FUSION),
    (CHAT, {"model": "fake/a", "messages": HI, "stream": True}),
    (CHAT, {"model": "fake/a", "messages": HI}),
    ("/v1/responses", {"model": "fusion/trio", "input": "Hi", "stream": True, "store": False}),
    ("/v1/responses", {"model": "fake/a", "input": "Hi", "stream": True, "store": False}),
    ("/v1/messages", {"model": "fusion/trio", "max_tokens": 100, "messages": HI, "stream": True}),
    ("/v1/messages", {"model": "fake/a", "max_tokens": 100, "messages": HI, "stream": True}),
]
FAILED = "the upstream failed"
# (id, failing model, its status, path, body, the client's status, what the client reads, retried by openfusion)
FAILURES = [
    ("panelist-500-retried", "a", 500, CHAT, FUSION, 200, "Answer", True),
    ("panelist-400", "a", 400, CHAT, {**FUSION, "stream": True}, 200, "Answer", False),
    ("synthesizer-500-sse", "synth", 500, CHAT, {**FUSION, "stream": True}, 200, FAILED, True),
    ("synthesizer-500-json", "synth", 500, CHAT, FUSION, 502, FAILED, True),
    ("pass-through-429-retried", "a", 429, CHAT, {"model": "fake/a", "messages": HI}, 429, FAILED, True),
    (
        "messages-synthesizer-500",
        "synth",
        500,
        "/v1/messages",
        {**FUSION, "max_tokens": 100, "stream": True},
        200,
        FAILED,
        True,
    ),
]
# tenacity's controller for a retried call is a cycle of its own (its state and its bound methods), and it keeps the
# retry policy openfusion gave it; once the call is done it holds nothing of the request.
RETRY_POLICY = {"_StopAtDeadline", "_WaitRetryAfter", "function retrying.<locals>.<lambda>"}
IDS = [
    f"{path.rsplit('/', 1)[-1]}-{body['model'].split('/')[0]}-{'sse' if body.get('stream') else 'json'}"
    for path, body in REQUESTS
]


def _code_of(obj: Any) -> types.CodeType | None:
    for attribute in ("__code__", "cr_code", "ag_code", "gi_code", "f_code"):
        code = getattr(obj, attribute, None)
        if isinstance(code, types.CodeType):
            return code
    return None


def _ours(obj: Any) -> str | None:
    """What `obj` is, when openfusion's code made it: an instance of its classes, or its function or frame."""
    kind = type(obj)
    if kind.__module__.startswith("openfusion"):
        return kind.__qualname__
    code = _code_of(obj)
    if code is not None and "/openfusion/" in code.co_filename:
        return f"{kind.__name__} {code.co_qualname}"
    return None


@pytest.fixture
def cyclic_garbage() -> Iterator[None]:
    """From here on, what a collection finds unreachable is kept in `gc.garbage` (not freed), to be looked at."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def ours_in_garbage() -> list[str]:
    """What openfusion made among the objects only the garbage collector could free."""
    gc.collect()
    return sorted({what for obj in gc.garbage if (what := _ours(obj)) is not None})


@pytest.mark.parametrize(("path", "body"), REQUESTS, ids=IDS)
def test_a_finished_request_leaves_no_reference_cycle(
    upstream: FakeUpstream, server: str, cyclic_garbage: None, path: str, body: dict[str, Any]
) -> None:
    headers = {"anthropic-version": "2023-06-01"} if path == "/v1/messages" else {}
    # Each response has ended before the next request leaves, and the server has let go of all but the last one.
    for _ in range(3):
        response = httpx.post(f"{server}{path}", json=body, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        assert "Answer" in response.text  # the fake's "Answer from <model>.", whole or in streamed words
    assert ours_in_garbage() == []


@pytest.mark.parametrize(
    ("model", "status", "path", "body", "answered", "says", "retried"),
    [f[1:] for f in FAILURES],
    ids=[f[0] for f in FAILURES],
)
def test_a_failed_upstream_call_leaves_no_reference_cycle(
    upstream: FakeUpstream,
    server: str,
    cyclic_garbage: None,
    model: str,
    status: int,
    path: str,
    body: dict[str, Any],
    answered: int,
    says: str,
    retried: bool,
) -> None:
    upstream.script(model, Script(status=status, error_message=FAILED))
    headers = {"anthropic-version": "2023-06-01"} if path == "/v1/messages" else {}
    for _ in range(3):
        response = httpx.post(f"{server}{path}", json=body, headers=headers, timeout=30)
        assert response.status_code == answered, response.text
        assert says in response.text
    calls = len(upstream.calls_for(model))  # the failure did happen, each time; retried, more than once each
    assert calls > 3 if retried else calls == 3
    assert set(ours_in_garbage()) <= RETRY_POLICY


# The fake upstream's own server runs in this process too: a stream cancelled there (its client, openfusion, left)
# leaves Starlette's task group in a cycle, and with it that connection's transport wrapper (openfusion's class).
FAKE_SERVERS_OWN = {"CoalescedWrites"}
LEFT = [
    (CHAT, {**FUSION, "stream": True}),
    (CHAT, {"model": "fake/synth", "messages": HI, "stream": True}),
    ("/v1/responses", {"model": "fusion/trio", "input": "Hi", "stream": True, "store": False}),
    ("/v1/messages", {"model": "fusion/trio", "max_tokens": 100, "messages": HI, "stream": True}),
]


@pytest.mark.parametrize(("path", "body"), LEFT, ids=[f"{p.rsplit('/', 1)[-1]}-{b['model']}" for p, b in LEFT])
def test_a_stream_whose_client_left_leaves_no_reference_cycle(
    upstream: FakeUpstream, server: str, cyclic_garbage: None, path: str, body: dict[str, Any]
) -> None:
    """The cancelled response task kept its CancelledError, whose traceback kept the frame relaying the body, which
    held the task: the whole request (its run, its ledger, its response) stayed until a full collection."""
    upstream.script("synth", Script(chunks=[f"w{i} " for i in range(200)], chunk_interval_s=0.05))
    headers = {"anthropic-version": "2023-06-01"} if path == "/v1/messages" else {}
    for _ in range(3):
        with httpx.stream("POST", f"{server}{path}", json=body, headers=headers, timeout=30) as response:
            read = b""
            for chunk in response.iter_bytes():
                read += chunk
                # With its space: "w3" alone may be part of a message id sent before the synthesizer is asked.
                if b"w3 " in read:
                    break  # the client leaves in the middle of the answer
    synth_calls = upstream.calls_for("synth")
    assert len(synth_calls) == 3
    wait_until(lambda: all(call.disconnected for call in synth_calls), timeout=5)  # each stream was cut short
    assert set(ours_in_garbage()) <= FAKE_SERVERS_OWN
