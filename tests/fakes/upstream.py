"""Scripted fake OpenAI-compatible upstream (chat completions + models) for end-to-end tests."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fakes import responses_api

DEFAULT_USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
_POLL_S = 0.02


@dataclass
class Script:
    """How the fake answers one call to a model."""

    content: str | None = None
    chunks: list[str] | None = None
    delay_s: float = 0.0
    headers_first: bool = True
    chunk_interval_s: float = 0.0  # between streamed chunks; a whole answer is then sent in dribs too
    status: int = 200
    error_message: str | None = None
    retry_after: str | None = None
    usage: dict[str, Any] | None = None
    cost: float | None = None
    response_model: str | None = None
    finish_reason: str = "stop"
    tool_calls: list[dict[str, Any]] | None = None
    raw_body: bytes | None = None
    raw_media_type: str | None = None  # the raw body's content type (default: JSON, or SSE for a stream)
    cut_stream_after: int | None = None  # streams: drop after this many content chunks; a whole answer: midway
    # Streams: end cleanly (no reset) after this many content chunks, with no finish_reason and no [DONE].
    end_stream_after: int | None = None
    # Streams: after the content chunks, this object as a mid-stream error event (`data: {"error": …}`), then a
    # clean end with no finish_reason and no [DONE].
    error_event: dict[str, Any] | None = None
    # Filler without progress, every this many seconds, until the client leaves: a space in a JSON body
    # (after the headers), an SSE comment in a stream (after the content chunks, before any finish).
    trickle_s: float | None = None
    reject_response_format: set[str] | None = None
    reset: bool = False  # drop the connection right after the status line: no body at all
    reject_status: int = 400  # llama.cpp's server answers a json_schema response_format with HTTP 500
    stream_usage: bool = True  # False: never send a usage chunk, even when asked (llama.cpp's server)
    # Streams: the usage rides on the chunk with the finish_reason (some providers' way), not on a chunk of its own.
    usage_on_finish: bool = False
    reject_parameters: set[str] | None = None  # sampling parameters refused with a 400 (as reasoning models do)
    # Sampling parameters refused with a 400 when the request turns reasoning on (other than 1), and taken without it:
    # as Anthropic's models refuse a temperature with thinking on.
    reject_with_reasoning: set[str] | None = None
    # Sampling parameters refused with a 400 above a bound, as OpenAI refuses `top_p: 5` ("above maximum value").
    reject_above: dict[str, float] | None = None
    reasoning: list[str] | None = None  # reasoning text (`delta.reasoning` pieces) before the answer
    reply_id: str | None = None  # the Responses answer's id (default: a new one each time); a provider may reuse one
    # Responses streams: how the provider breaks the stream off after `cut_stream_after` text deltas (default 1), before
    # its terminal event: "drop" (the connection dropped), "stall" (silent, the connection open, until the client
    # leaves: its read timeout), "malformed" (an event that is not JSON, then a clean end), "error" (the API's own
    # `error` event, `error_message` its message, then a clean end), "event line" (the next event's `event:` line
    # alone, written with the last delta, then silent until the client leaves).
    break_stream: str | None = None
    # Held after `delay_s` until the test sets it (or the client leaves): a run stays under way for exactly as long as
    # the test needs, however slowly a loaded machine gets there. A stream sends its headers first, as with a delay.
    gate: threading.Event | None = None
    # Streams: the write of a content chunk followed by a cut (`cut_stream_after`) or a pause (`chunk_interval_s`) ends
    # with the first half of the next chunk's event (the rest of it follows the pause): whoever has read the one has
    # read the other.
    half_event: bool = False
    split_data: bool = False  # Responses streams: each event's JSON data on two `data:` lines (SSE joins them)


@dataclass
class Call:
    """One request received by the fake, with its timing."""

    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    stream: bool
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    disconnected: bool = False
    held: bool = False  # waiting at its script's gate right now
    ended_early: bool = False  # a stream the fake ended cleanly before its finish_reason, as scripted
    path: str = "/v1/chat/completions"
    trickled: int = 0  # filler pieces sent (spaces or SSE comments), as scripted by `trickle_s`
    # The fault the fake put in this answer, once it did: "status 429", "reset", "raw body", "cut", "drip".
    # (A delay shows as `disconnected` when the caller gave up waiting.)
    fault: str | None = None
    half: bytes = b""  # the first half of an event it sent (`Script.half_event`, `break_stream="event line"`)


class _StreamCut(Exception):
    """Raised inside a stream so uvicorn drops the connection mid-body."""


class _QuietStreamCut(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _StreamCut))


# uvicorn logs any exception escaping the app as an error; a deliberate cut is not one.
logging.getLogger("uvicorn.error").addFilter(_QuietStreamCut())


class _ClosingStreamingResponse(StreamingResponse):
    # Starlette may cancel the send loop while the generator sits at a `yield`; closing it here
    # runs its `finally` (which records the disconnect) now instead of at garbage collection.
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


def web_fetch_call(url: str) -> dict[str, Any]:
    """A model's tool call asking the gateway to fetch `url` (for `Script(tool_calls=[...])`)."""
    return {"function": {"name": "web_fetch", "arguments": {"url": url}}}


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll `predicate` until it is true; raise AssertionError after `timeout` seconds.

    The deadline only bounds a hang: a server on a loaded machine can take seconds to get to what is waited for.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None, **kw: Any) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json", **kw)


def _error(status: int, message: str, headers: dict[str, str] | None = None, **kw: Any) -> Response:
    err_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return _json({"error": {"message": message, "type": err_type, "code": status}}, status, headers, **kw)


def _finish(call: Call, disconnected: bool = False) -> None:
    call.finished = time.monotonic()
    call.disconnected = call.disconnected or disconnected


async def _finish_async(call: Call) -> None:
    _finish(call)


async def _dripped(request: Request, call: Call, events: list[bytes], interval_s: float) -> AsyncIterator[bytes]:
    """A Responses event stream with a pause before each text delta but the first (the client gone: it stops)."""
    deltas = 0
    for event in events:
        if b"response.output_text.delta" in event:
            deltas += 1
            if deltas > 1 and await _pause(request, interval_s):
                _finish(call, disconnected=True)
                return
        yield event


async def _broken_responses(
    request: Request, call: Call, events: list[bytes], script: Script, failed: dict[str, Any] | None
) -> AsyncIterator[bytes]:
    """A Responses event stream broken off after `events` as `script.break_stream` says (the fault noted on `call`);
    `failed`: the response its `response.failed` gives after an `error` event."""
    disconnected = True  # unless it ends on purpose
    try:
        *before, last = events
        for event in before:
            yield event
        how = call.fault = script.break_stream
        if how == "event line":  # with the last event, in one write: a client that has read the one has the other
            call.half = b"event: response.output_text.delta\n"
            yield last + call.half
            await _pause(request, 3600)  # until the client gives up waiting
            return
        yield last
        if how == "drop":
            disconnected = False
            raise _StreamCut("responses stream dropped")
        if how == "stall":
            await _pause(request, 3600)  # until the client gives up waiting
            return
        if how == "malformed":
            yield b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":\n\n'
        elif how == "error":
            message = script.error_message or "The server had an error while processing your request."
            error = {"type": "error", "code": "server_error", "message": message, "param": None,
                     "sequence_number": len(events)}  # fmt: skip
            yield b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"
            if failed is not None:
                event = {"type": "response.failed", "sequence_number": len(events) + 1, "response": failed}
                yield b"event: response.failed\ndata: " + orjson.dumps(event) + b"\n\n"
        else:
            raise ValueError(f"unknown break_stream {how!r}")
        disconnected = False
    finally:
        _finish(call, disconnected)


async def _pause(request: Request, seconds: float) -> bool:
    """Sleep up to `seconds`; return True as soon as the client has disconnected."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if await request.is_disconnected():
            return True
        await asyncio.sleep(min(_POLL_S, left))
    return False


async def _hold(request: Request, call: Call, script: Script) -> bool:
    """Wait `delay_s`, then at the script's gate until it is set; return True as soon as the client has disconnected."""
    if await _pause(request, script.delay_s):
        return True
    if script.gate is None:
        return False
    call.held = True
    try:
        while not script.gate.is_set():
            if await request.is_disconnected():
                return True
            await asyncio.sleep(_POLL_S)
        return False
    finally:
        call.held = False


def _tool_calls(script: Script) -> list[dict[str, Any]]:
    """Normalise scripted tool calls: default id/type, arguments as a JSON string."""
    out = []
    for i, tc in enumerate(script.tool_calls or []):
        fn = tc.get("function", tc)
        args = fn.get("arguments", "")
        out.append(
            {
                "id": tc.get("id", f"call_{i}"),
                "type": tc.get("type", "function"),
                "function": {
                    "name": fn["name"],
                    "arguments": args if isinstance(args, str) else orjson.dumps(args).decode(),
                },
            }
        )
    return out


class FakeUpstream:
    """A scripted OpenAI-compatible server; serve `.app` and inspect `.calls`."""

    def __init__(self, default: Script | None = None) -> None:
        self.default = self._initial_default = default or Script()
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Script]] = {}
        self._calls: list[Call] = []
        self._ids = itertools.count(1)
        self._app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/responses", self._responses, methods=["POST"]),
            ]
        )

    @property
    def app(self) -> Starlette:
        """The ASGI app to serve."""
        return self._app

    def script(self, model: str, *scripts: Script) -> None:
        """Script `model`: one Script for every call, or a queue consumed per call (the last repeats)."""
        if not scripts:
            raise ValueError("script() needs at least one Script")
        with self._lock:
            self._scripts[model] = list(scripts)

    @property
    def calls(self) -> list[Call]:
        """Snapshot of all calls received so far, oldest first."""
        with self._lock:
            return list(self._calls)

    def calls_for(self, model: str) -> list[Call]:
        """Calls whose requested model is `model`."""
        return [c for c in self.calls if c.model == model]

    def reset(self) -> None:
        """Forget all scripts and calls and restore the constructor's default Script."""
        with self._lock:
            self.default = self._initial_default
            self._scripts.clear()
            self._calls.clear()

    def _next_script(self, model: str) -> Script:
        with self._lock:
            queue = self._scripts.get(model)
            if not queue:
                return self.default
            return queue.pop(0) if len(queue) > 1 else queue[0]

    async def _models(self, request: Request) -> Response:
        with self._lock:
            models = sorted(self._scripts)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in models]
        return _json({"object": "list", "data": data})

    async def _responses(self, request: Request) -> Response:
        """The Responses API, for a provider that speaks it: text answers, errors, delays and raw bodies as scripted."""
        body = orjson.loads(await request.body())
        model = str(body.get("model", ""))
        call = Call(model, body, dict(request.headers), body.get("stream") is True, path="/v1/responses")
        with self._lock:
            self._calls.append(call)
        script = self._next_script(model)
        done = BackgroundTask(_finish_async, call)
        if await _hold(request, call, script):
            _finish(call, disconnected=True)
            return Response(status_code=204)
        if script.raw_body is not None:  # as for chat: sent as it is, whether or not the request streams
            call.fault = "raw body"
            media = script.raw_media_type or ("text/event-stream" if call.stream else "application/json")
            return Response(script.raw_body, script.status, media_type=media, background=done)
        if script.status != 200:
            message = script.error_message or f"Fake upstream error {script.status} for {model}"
            return _error(script.status, message, background=done)
        reply = _Reply(script, model, script.reply_id or f"resp_fake{next(self._ids)}")
        text, usage = reply.content or "", reply.usage
        store = body.get("store") is not False  # echoed, as OpenAI does (kept unless asked not to)
        status = "incomplete" if script.finish_reason == "length" else "completed"  # cut off at max_output_tokens
        if not call.stream:
            return _json(responses_api.response_object(reply.base["id"], model, text, usage, status=status,
                                                       store=store), background=done)  # fmt: skip
        if script.break_stream is not None:
            events = responses_api.stream_events(reply.base["id"], model, text, usage, store=store,
                                                 end_after=script.cut_stream_after or 1,
                                                 split_data=script.split_data)  # fmt: skip
            failed = None  # "error" with `error_event`: the provider's own `response.failed` follows its `error`
            if script.error_event is not None:
                failed = {**responses_api.response_object(reply.base["id"], model, text, usage, status="failed",
                                                          store=store), "error": script.error_event}  # fmt: skip
            broken = _broken_responses(request, call, list(events), script, failed)
            return _ClosingStreamingResponse(broken, media_type="text/event-stream")
        events = responses_api.stream_events(reply.base["id"], model, text, usage, end_after=script.end_stream_after,
                                             error=script.error_event, store=store, status=status,
                                             split_data=script.split_data)  # fmt: skip
        if script.chunk_interval_s:  # each text delta `chunk_interval_s` after the one before
            return StreamingResponse(_dripped(request, call, list(events), script.chunk_interval_s),
                                     media_type="text/event-stream", background=done)  # fmt: skip
        return StreamingResponse(iter(list(events)), media_type="text/event-stream", background=done)

    async def _chat(self, request: Request) -> Response:
        started = time.monotonic()
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return _error(400, f"Invalid JSON body: {exc}")
        if not isinstance(body, dict):
            return _error(400, "Request body must be a JSON object")
        model = str(body.get("model", ""))
        call = Call(model, body, dict(request.headers), body.get("stream") is True, started)
        with self._lock:
            self._calls.append(call)
        script = self._next_script(model)
        done = BackgroundTask(_finish_async, call)

        fmt = (body.get("response_format") or {}).get("type")
        rejected = bool(script.reject_response_format) and fmt in script.reject_response_format
        streaming = call.stream and not rejected and script.raw_body is None and script.status == 200
        if not (streaming and script.headers_first) and await _hold(request, call, script):
            _finish(call, disconnected=True)
            return Response(status_code=204)  # nobody is listening any more

        if script.reset:
            call.fault = "reset"
            return _ClosingStreamingResponse(_reset_body(call), media_type="application/json")
        refused = sorted(name for name in script.reject_parameters or () if body.get(name) is not None)
        if refused:  # OpenAI's words for a reasoning model given a temperature
            message = f"Unsupported parameter: '{refused[0]}' is not supported with this model."
            error = {"message": message, "type": "invalid_request_error", "param": refused[0], "code": None}
            return _json({"error": error}, 400, background=done)
        thinking = body.get("reasoning") is not None or body.get("reasoning_effort") not in (None, "none")
        refused = [n for n in sorted(script.reject_with_reasoning or ()) if thinking and body.get(n) not in (None, 1)]
        if refused:  # Anthropic's words
            message = f"`{refused[0]}` may only be set to 1 when thinking is enabled."
            return _json({"error": {"message": message, "type": "invalid_request_error"}}, 400, background=done)
        for name, bound in (script.reject_above or {}).items():
            value = body.get(name)
            if isinstance(value, int | float) and value > bound:  # OpenAI's words for a value out of range
                message = (
                    f"Invalid '{name}': decimal above maximum value. Expected a value <= {bound}, but got {value}."
                )
                error = {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": name,
                    "code": "decimal_above_max_value",
                }
                return _json({"error": error}, 400, background=done)
        if rejected:
            message = f"response_format type '{fmt}': Input should be 'text' or 'json_object'"
            return _error(script.reject_status, message, background=done)
        if script.raw_body is not None:
            call.fault = "raw body"
            media = script.raw_media_type or ("text/event-stream" if call.stream else "application/json")
            return Response(script.raw_body, script.status, media_type=media, background=done)
        if script.status != 200:
            call.fault = f"status {script.status}"
            headers = {"retry-after": script.retry_after} if script.retry_after else None
            message = script.error_message or f"Fake upstream error {script.status} for {model}"
            return _error(script.status, message, headers, background=done)

        reply = _Reply(script, model, f"chatcmpl-fake-{next(self._ids)}")
        if not streaming and script.trickle_s is not None:
            trickle = _trickle(request, call, b" ", script.trickle_s)
            return _ClosingStreamingResponse(trickle, media_type="application/json")
        if not streaming and (script.cut_stream_after is not None or script.chunk_interval_s):
            body_pieces = _completion_pieces(request, call, script, orjson.dumps(reply.completion()))
            return _ClosingStreamingResponse(body_pieces, media_type="application/json")
        if not streaming:
            return _json(reply.completion(), background=done)
        include_usage = script.stream_usage and bool((body.get("stream_options") or {}).get("include_usage"))
        events = _stream_events(request, call, script, reply, include_usage)
        return _ClosingStreamingResponse(events, headers={"cache-control": "no-cache"}, media_type="text/event-stream")


class _Reply:
    """The successful answer a Script describes, in OpenAI shapes."""

    def __init__(self, script: Script, model: str, reply_id: str) -> None:
        self.tool_calls = _tool_calls(script)
        self.content = script.content
        if self.content is None and script.chunks is not None:
            self.content = "".join(script.chunks)
        elif self.content is None and not self.tool_calls:
            self.content = f"Answer from {model}."
        self.usage = dict(script.usage or DEFAULT_USAGE)
        if script.cost is not None:
            self.usage["cost"] = script.cost
        self.finish_reason = script.finish_reason
        self.reasoning = script.reasoning
        if self.tool_calls and self.finish_reason == "stop":
            self.finish_reason = "tool_calls"
        self.base = {"id": reply_id, "created": int(time.time()), "model": script.response_model or model}

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning:
            message["reasoning"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        choice = {"index": 0, "message": message, "finish_reason": self.finish_reason}
        return {**self.base, "object": "chat.completion", "choices": [choice], "usage": self.usage}

    def chunk(
        self,
        delta: dict[str, Any] | None,
        finish: str | None = None,
        usage: dict[str, Any] | None = None,
        include_usage: bool = False,
    ) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        data = {**self.base, "object": "chat.completion.chunk", "choices": choices}
        if include_usage:  # like OpenAI: `usage: null` on every chunk but the last
            data["usage"] = usage
        return b"data: " + orjson.dumps(data) + b"\n\n"


async def _trickle(request: Request, call: Call, filler: bytes, interval_s: float) -> AsyncIterator[bytes]:
    """`filler` every `interval_s` until the client leaves (then the call is marked disconnected)."""
    try:
        while True:
            yield filler
            call.trickled += 1
            if await _pause(request, interval_s):
                return
    finally:
        _finish(call, disconnected=True)


async def _completion_pieces(request: Request, call: Call, script: Script, body: bytes) -> AsyncIterator[bytes]:
    """A whole answer in pieces: cut off midway (`cut_stream_after`), or dripped (`chunk_interval_s` apart)."""
    disconnected = True  # unless we reach the end or cut on purpose
    try:
        if script.cut_stream_after is not None:
            yield body[: len(body) // 2]
            call.fault, disconnected = "cut", False
            raise _StreamCut("body cut midway")
        count = len(script.chunks or ()) or 4
        size = -(-len(body) // count)
        for n in range(0, len(body), size):
            if n:
                if await _pause(request, script.chunk_interval_s):
                    return
                call.fault = "drip"
            yield body[n : n + size]
        disconnected = False
    finally:
        _finish(call, disconnected)


async def _reset_body(call: Call) -> AsyncIterator[bytes]:
    """A body that breaks off before its first byte (uvicorn then drops the connection)."""
    _finish(call)
    raise _StreamCut("connection reset on purpose")
    yield b""  # pragma: no cover - makes this an async generator


async def _stream_events(
    request: Request, call: Call, script: Script, reply: _Reply, include_usage: bool
) -> AsyncIterator[bytes]:
    """SSE body of a streamed reply; records on `call` how it ended."""

    def event(delta: dict[str, Any] | None, finish: str | None = None) -> bytes:
        return reply.chunk(delta, finish, include_usage=include_usage)

    disconnected = True  # unless we reach the end or cut on purpose
    try:
        if script.headers_first and await _hold(request, call, script):
            return
        yield event({"role": "assistant", "content": "" if reply.content is not None else None})
        for piece in script.reasoning or []:
            yield event({"reasoning": piece})
        if script.chunks is not None:
            pieces = script.chunks
        else:
            pieces = re.findall(r"\S+\s*|\s+", reply.content or "")
        cut = script.cut_stream_after if script.cut_stream_after is not None else script.end_stream_after
        half = b""  # the first half of the next event, written with this one
        for n, piece in enumerate(pieces if cut is None else pieces[:cut]):
            if n and await _pause(request, script.chunk_interval_s):
                return
            if n and script.chunk_interval_s:
                call.fault = "drip"
            out = event({"content": piece})[len(half) :]  # (the rest of it, when its first half went out)
            half = b""
            if script.half_event and n + 1 < len(pieces) and (script.chunk_interval_s or n + 1 == cut):
                upcoming = event({"content": pieces[n + 1]})
                half = call.half = upcoming[: len(upcoming) // 2]
            yield out + half
        if script.cut_stream_after is not None:
            call.fault, disconnected = "cut", False
            raise _StreamCut(f"stream cut after {cut} content chunks")
        if script.trickle_s is not None:
            async for filler in _trickle(request, call, b": keep-alive\n\n", script.trickle_s):
                yield filler
            return
        if script.end_stream_after is not None or script.error_event is not None:
            if script.error_event is not None:
                yield b"data: " + orjson.dumps({**reply.base, "error": script.error_event}) + b"\n\n"
            disconnected, call.ended_early = False, True
            return
        for i, tc in enumerate(reply.tool_calls):
            args = tc["function"]["arguments"]
            yield event({"tool_calls": [{"index": i, **tc, "function": {**tc["function"], "arguments": ""}}]})
            # Split the arguments so clients must reassemble them, as with real servers.
            for j in range(0, len(args), 8):
                yield event({"tool_calls": [{"index": i, "function": {"arguments": args[j : j + 8]}}]})
        if include_usage and script.usage_on_finish:
            yield reply.chunk({}, reply.finish_reason, usage=reply.usage, include_usage=True)
        else:
            yield event({}, reply.finish_reason)
            if include_usage:
                yield reply.chunk(None, usage=reply.usage, include_usage=True)
        yield b"data: [DONE]\n\n"
        disconnected = False
    finally:
        _finish(call, disconnected)
