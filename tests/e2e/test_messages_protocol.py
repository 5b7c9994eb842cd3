"""The Messages wire protocol, read raw from the real server: exact event order, pings, errors in Anthropic's shape.

Lenient clients hide protocol mistakes (a delta before its block started, a `[DONE]`), so these
tests read the SSE lines themselves.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, Script, wait_until
from openfusion.api.messages.writer import thinking_signature
from openfusion.app import create_app
from openfusion.settings import Settings

from .test_shutdown import served

MESSAGES = "/v1/messages"
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]
HEADERS = {"x-api-key": "sk-client-key-7d2e4f9a", "anthropic-version": "2023-06-01"}


def read_stream(url: str, body: dict[str, Any], **headers: str) -> tuple[list[str], list[dict[str, Any]]]:
    """POST a streamed request: every non-empty SSE line, and the parsed `data:` payloads."""
    with httpx.stream("POST", f"{url}{MESSAGES}", json={**body, "stream": True}, headers={**HEADERS, **headers},
                      timeout=30) as response:  # fmt: skip
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    return lines, [json.loads(line[6:]) for line in lines if line.startswith("data: ")]


def check_framing(lines: list[str], events: list[dict[str, Any]]) -> None:
    """Anthropic's framing: each event an `event:` line naming its data's type, blocks in order, no `[DONE]`."""
    assert lines[0] == "event: message_start" and events[0]["type"] == "message_start"
    assert "data: [DONE]" not in lines and not any(line.startswith(":") for line in lines)
    assert [line[7:] for line in lines if line.startswith("event: ")] == [e["type"] for e in events]
    open_block: int | None = None
    kinds: dict[int, str] = {}
    signed: set[int] = set()
    for event in events:
        if event["type"] == "content_block_start":
            assert open_block is None and event["index"] == len(kinds)  # one at a time, numbered in order
            open_block = event["index"]
            kinds[open_block] = event["content_block"]["type"]
        elif event["type"] == "content_block_delta":
            assert event["index"] == open_block  # never a delta before its block started, or after it stopped
            assert open_block not in signed  # a thinking block's signature is its last delta
            expected = {"text": "text_delta", "thinking": "thinking_delta", "tool_use": "input_json_delta"}
            if event["delta"]["type"] == "signature_delta" and kinds[open_block] == "thinking":
                signed.add(open_block)
            else:
                assert event["delta"]["type"] == expected[kinds[open_block]]
        elif event["type"] == "content_block_stop":
            assert event["index"] == open_block
            assert kinds[open_block] != "thinking" or open_block in signed  # Claude Code drops unsigned thinking
            open_block = None
        elif event["type"] in ("message_delta", "message_stop", "error"):
            assert open_block is None or event["type"] == "error"


def kinds_of(events: list[dict[str, Any]]) -> list[str]:
    """The event types, with runs of pings squeezed to one."""
    out: list[str] = []
    for event in events:
        if not (event["type"] == "ping" and out and out[-1] == "ping"):
            out.append(event["type"])
    return out


@pytest.fixture
def start(make_settings: Callable[..., Settings]) -> Callable[..., AbstractContextManager[str]]:
    """openfusion under uvicorn with settings overrides and the client key `sk-client-key-7d2e4f9a`."""

    @contextmanager
    def run(**overrides: Any) -> Iterator[str]:
        environ = {"FAKE_KEY": "sk-provider-secret", "CLIENT_KEY": "sk-client-key-7d2e4f9a"}
        keys = [{"name": "claude", "key_env": "CLIENT_KEY"}]
        with serve_in_thread(create_app(make_settings(keys=keys, **overrides), environ=environ)) as url:
            yield url

    return run


def test_the_event_flow_of_a_fused_answer_with_pings_while_the_panel_works(
    upstream: FakeUpstream, start: Callable[..., AbstractContextManager[str]]
) -> None:
    upstream.script("a", Script(delay_s=0.6))  # a slow panelist: pings while it works
    upstream.script("synth", Script(chunks=["Rayleigh ", "scattering."]))

    with start(keepalive_interval_s=0.1) as url:
        lines, events = read_stream(url, {"model": "fusion/trio", "max_tokens": 100, "messages": QUESTION})

    check_framing(lines, events)
    assert kinds_of(events) == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert sum(e["type"] == "ping" for e in events) >= 3  # 0.6 s of panel at one ping per 0.1 s of silence
    started = events[0]["message"]
    assert started["id"].startswith("msg_") and started["content"] == [] and started["stop_reason"] is None
    assert started["model"] == "fake/synth" and started["role"] == "assistant"
    assert started["usage"]["input_tokens"] > 0  # an estimate: the run has not counted anything yet
    block = next(e for e in events if e["type"] == "content_block_start")
    assert block == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    assert deltas == [{"type": "text_delta", "text": "Rayleigh "}, {"type": "text_delta", "text": "scattering."}]
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert (delta["usage"]["input_tokens"], delta["usage"]["output_tokens"]) == (55, 35)  # cumulative, the run's
    assert events[-1] == {"type": "message_stop"}


def test_text_then_a_tool_call(upstream: FakeUpstream, server: str) -> None:
    call = {"id": "toolu_1", "function": {"name": "get_time", "arguments": {"zone": "UTC", "format": "iso"}}}
    upstream.script("solo", Script(content="Checking.", tool_calls=[call]))
    tool = {"name": "get_time", "input_schema": {"type": "object"}}

    lines, events = read_stream(server, {"model": "fake/solo", "max_tokens": 50, "messages": QUESTION,
                                         "tools": [tool]})  # fmt: skip

    check_framing(lines, events)
    starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
    assert starts == [{"type": "text", "text": ""}, {"type": "tool_use", "id": "toolu_1", "name": "get_time",
                                                     "input": {}}]  # fmt: skip
    partial = "".join(e["delta"]["partial_json"] for e in events if e["delta" if "delta" in e else "type"] and
                      e["type"] == "content_block_delta" and e["index"] == 1)  # fmt: skip
    assert json.loads(partial) == {"zone": "UTC", "format": "iso"}
    assert next(e for e in events if e["type"] == "message_delta")["delta"]["stop_reason"] == "tool_use"


def reasoning_stream(reasoning: list[str], content: list[str]) -> bytes:
    """A chat stream whose deltas carry reasoning, then content (as reasoning models send them)."""
    base = {"id": "chatcmpl-r", "object": "chat.completion.chunk", "created": 0, "model": "thinker"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    pieces = [chunk({"role": "assistant", "reasoning": r}) for r in reasoning]
    pieces += [chunk({"content": c}) for c in content] + [chunk({}, "stop"), b"data: [DONE]"]
    return b"\n\n".join(pieces) + b"\n\n"


@pytest.mark.parametrize(
    ("thinking", "shown"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, True),
        ({"type": "adaptive", "display": "omitted"}, False),
        (None, False),
    ],
)
def test_thinking_deltas_only_inside_a_thinking_block(
    upstream: FakeUpstream, server: str, thinking: dict[str, Any] | None, shown: bool
) -> None:
    upstream.script("thinker", Script(raw_body=reasoning_stream(["Light ", "scatters."], ["Blue."])))
    body = {"model": "fake/thinker", "max_tokens": 2048, "messages": QUESTION}

    lines, events = read_stream(server, {**body, **({"thinking": thinking} if thinking else {})})

    check_framing(lines, events)
    starts = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
    assert starts == (["thinking", "text"] if shown else ["text"])
    thought = [e["delta"] for e in events if e["type"] == "content_block_delta" and e["index"] == 0]
    if shown:
        assert thought == [{"type": "thinking_delta", "thinking": "Light "},
                           {"type": "thinking_delta", "thinking": "scatters."},
                           {"type": "signature_delta", "signature": thinking_signature("Light scatters.")}]  # fmt: skip
        assert thought[-1]["signature"].startswith("openfusion:") and len(thought[-1]["signature"]) > 20
    else:
        assert thought == [{"type": "text_delta", "text": "Blue."}]


def test_a_failed_fusion_ends_the_stream_with_an_error_event(upstream: FakeUpstream, server: str) -> None:
    for model in "abc":
        upstream.script(model, Script(status=500, error_message=f"{model} is down"))

    lines, events = read_stream(server, {"model": "fusion/trio", "max_tokens": 100, "messages": QUESTION})

    check_framing(lines, events)
    assert [e["type"] for e in events if e["type"] != "ping"] == ["message_start", "error"]
    error = events[-1]
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "a is down" in json.dumps(error) or "panel" in error["error"]["message"].lower()


def test_a_broken_upstream_stream_ends_with_an_error_event(upstream: FakeUpstream, server: str) -> None:
    upstream.script("solo", Script(chunks=["Half ", "an ", "answer"], cut_stream_after=1))

    lines, events = read_stream(server, {"model": "fake/solo", "max_tokens": 100, "messages": QUESTION})

    check_framing(lines, events)
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "error"
    assert events[-1]["error"]["type"] == "api_error" and "lost its connection" in events[-1]["error"]["message"]
    assert not {"message_delta", "message_stop"} & {e["type"] for e in events}
    assert upstream.calls_for("solo")[0].finished is not None  # the fake did cut the stream


def test_a_stalled_upstream_ends_with_an_error_event_not_a_bare_close(
    upstream: FakeUpstream, start: Callable[..., AbstractContextManager[str]]
) -> None:
    upstream.script("solo", Script(chunks=["Started ", "then stalled."], chunk_interval_s=5))

    # Pings every 0.1 s, the upstream given up on after 1 s of silence: only a stall of the whole process for most
    # of a second could leave no ping. (At 0.2 s / 0.5 s, one run of the whole suite once saw none.)
    with start(http={"read_timeout_s": 1.0}, keepalive_interval_s=0.1) as url:
        lines, events = read_stream(url, {"model": "fake/solo", "max_tokens": 100, "messages": QUESTION})
        wait_until(lambda: upstream.calls_for("solo")[0].disconnected, timeout=10)  # openfusion gave up on it

    check_framing(lines, events)
    assert kinds_of(events)[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "timeout_error"
    assert "ping" in kinds_of(events)  # the client heard from us while the upstream was silent


def anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    """Assert an Anthropic-shaped error with this status and type; its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind and set(body["error"]) == {"type", "message"}
    return str(body["error"]["message"])


def test_errors_before_and_after_routing_are_in_anthropics_shape(
    upstream: FakeUpstream, start: Callable[..., AbstractContextManager[str]]
) -> None:
    body = {"model": "fake/solo", "max_tokens": 10, "messages": QUESTION}
    with contextlib.ExitStack() as stack, start(max_body_bytes=2048, limits={"requests_per_minute": 8}) as url:
        http = stack.enter_context(httpx.Client(base_url=url, timeout=10))
        post = http.post
        no_key = post(MESSAGES, json=body)
        wrong_key = post(MESSAGES, json=body, headers={"x-api-key": "sk-wrong"})
        too_large = post(MESSAGES, json={**body, "system": "x" * 4096}, headers=HEADERS)
        no_route = post("/v1/messages/nope", json=body, headers=HEADERS)
        no_model = post(MESSAGES, json={**body, "model": "nobody/serves-this"}, headers=HEADERS)
        no_max_tokens = post(MESSAGES, json={"model": "fake/solo", "messages": QUESTION}, headers=HEADERS)
        bad_block = post(MESSAGES, json={**body, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
                         headers=HEADERS)  # fmt: skip
        not_json = post(MESSAGES, content=orjson.dumps(body), headers={**HEADERS, "content-type": "text/plain"})
        cross_site = post(MESSAGES, json=body, headers={**HEADERS, "sec-fetch-site": "cross-site"})
        wrong_method = httpx.get(f"{url}{MESSAGES}", headers=HEADERS)
        counted = post(f"{MESSAGES}/count_tokens", json={"model": "fake/solo"}, headers=HEADERS)
        chat = post("/v1/chat/completions", json={"model": "fake/solo", "messages": QUESTION}, headers=HEADERS)
        over_limit = post(MESSAGES, json=body, headers=HEADERS)

    anthropic_error(no_key, 401, "authentication_error")
    anthropic_error(wrong_key, 401, "authentication_error")
    anthropic_error(too_large, 413, "request_too_large")
    anthropic_error(no_route, 404, "not_found_error")
    assert "nobody/serves-this" in anthropic_error(no_model, 404, "not_found_error")
    assert "max_tokens" in anthropic_error(no_max_tokens, 400, "invalid_request_error")
    assert anthropic_error(bad_block, 400, "invalid_request_error").startswith("messages.0.content.0.type: ")
    anthropic_error(not_json, 415, "invalid_request_error")
    anthropic_error(cross_site, 403, "permission_error")
    anthropic_error(wrong_method, 405, "invalid_request_error")
    assert "messages" in anthropic_error(counted, 400, "invalid_request_error")
    assert chat.status_code == 200  # other surfaces keep their own shape
    anthropic_error(over_limit, 429, "rate_limit_error")
    assert over_limit.headers["retry-after"]
    assert upstream.calls_for("serves-this") == []


def test_the_sdk_raises_its_own_errors(
    upstream: FakeUpstream, start: Callable[..., AbstractContextManager[str]]
) -> None:
    upstream.script("solo", Script(status=429, error_message="slow down", retry_after="30"))
    for model in "abc":
        upstream.script(model, Script(status=500))

    with start() as url:
        with (
            anthropic.Anthropic(base_url=url, api_key="sk-wrong", max_retries=0) as wrong,
            pytest.raises(anthropic.AuthenticationError),
        ):
            wrong.messages.create(model="fake/solo", max_tokens=10, messages=QUESTION)  # type: ignore[arg-type]
        with anthropic.Anthropic(base_url=url, api_key="sk-client-key-7d2e4f9a", max_retries=0) as client:
            with pytest.raises(anthropic.RateLimitError) as limited:
                client.messages.create(model="fake/solo", max_tokens=10, messages=QUESTION)  # type: ignore[arg-type]
            with pytest.raises(anthropic.InternalServerError) as failed:
                client.messages.create(model="fusion/trio", max_tokens=10, messages=QUESTION)  # type: ignore[arg-type]
            with (
                pytest.raises(anthropic.APIStatusError) as mid_stream,
                client.messages.stream(
                    model="fusion/trio",
                    max_tokens=10,
                    messages=QUESTION,  # type: ignore[arg-type]
                ) as stream,
            ):
                stream.get_final_message()

    assert limited.value.status_code == 429 and limited.value.response.headers["retry-after"] == "30"
    assert failed.value.status_code == 502 and failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert mid_stream.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_bearer_and_x_api_key_both_authenticate(
    upstream: FakeUpstream, start: Callable[..., AbstractContextManager[str]]
) -> None:
    body = {"model": "fake/solo", "max_tokens": 10, "messages": QUESTION}
    with start() as url:
        bearer = httpx.post(f"{url}{MESSAGES}", json=body, headers={"authorization": "Bearer sk-client-key-7d2e4f9a"})
        api_key = httpx.post(f"{url}{MESSAGES}", json=body, headers={"x-api-key": "sk-client-key-7d2e4f9a"})
        chat = httpx.post(f"{url}/v1/chat/completions", json={"model": "fake/solo", "messages": QUESTION},
                          headers={"x-api-key": "sk-client-key-7d2e4f9a"})  # fmt: skip
        both = httpx.post(f"{url}{MESSAGES}", json=body,
                          headers={"authorization": "Bearer sk-wrong", **HEADERS})  # fmt: skip

    assert bearer.status_code == api_key.status_code == chat.status_code == 200
    assert both.status_code == 401  # Authorization, when sent, is the key that counts
    assert all("sk-client-key-7d2e4f9a" not in json.dumps(c.headers) for c in upstream.calls)  # never passed upstream


def test_past_the_shutdown_grace_a_stream_ends_with_an_error_event(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Any, tmp_path: Any
) -> None:
    """SIGTERM while a fused Messages stream and a whole request wait on a slow panel: both end in Anthropic's shape."""
    _, upstream_url = fake_upstream
    for model in "abc":
        upstream.script(model, Script(delay_s=60))
    body = {"model": "fusion/trio", "max_tokens": 10, "messages": QUESTION}
    results: list[httpx.Response] = []

    def send(stream: bool) -> threading.Thread:
        def run() -> None:
            with httpx.stream("POST", f"{url}{MESSAGES}", json={**body, "stream": stream}, timeout=60) as response:
                response.read()
                results.append(response)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    with served(upstream_url, presets_dir, tmp_path, grace_s=1) as (url, process):
        threads = [send(True), send(False)]
        wait_until(lambda: len(upstream.calls) == 6, timeout=20)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0  # a clean stop
        for thread in threads:
            thread.join(15)

    streamed = next(r for r in results if r.headers["content-type"].startswith("text/event-stream"))
    lines = [line for line in streamed.text.splitlines() if line]
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert events[0]["type"] == "message_start" and lines[-2] == "event: error"
    assert events[-1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": events[-1]["error"]["message"]},
    }
    whole = next(r for r in results if r is not streamed)
    anthropic_error(whole, 529, "overloaded_error")  # Anthropic's pair (503 elsewhere)
    wait_until(lambda: all(call.disconnected for call in upstream.calls))  # every panel call was closed
