"""A fake provider that speaks Anthropic's Messages API natively (`POST /v1/messages`), for pass-through tests.

It records every call with its headers, so a test can assert what reached the provider: the
provider's key as `x-api-key`, the client's `anthropic-version` and `anthropic-beta` unchanged.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from fakes.upstream import _ClosingStreamingResponse, _pause, _StreamCut

USAGE = {"input_tokens": 21, "output_tokens": 4, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 0}


@dataclass
class Reply:
    """How the fake answers one call."""

    text: str = "Native answer."
    status: int = 200
    cut_after: int | None = None  # stream: break off after this many events
    end_after: int | None = None  # stream: end cleanly after this many events (no message_stop)
    error_after: int | None = None  # stream: after this many events, Anthropic's own `error` event, then the end
    # This JSON answered whole, as it is, whether or not the request streams (a server that ignores `stream: true`)
    whole: dict[str, Any] | None = None
    usage: dict[str, Any] = field(default_factory=lambda: USAGE)  # what the answer reports it used
    # Stream: each event's fields in alphabetical order, as a server that writes the anthropic SDK's own event models
    # writes them: `type` after a `message_start`'s message, amid a `message_delta`, after an `error`'s error; and a
    # `message_stop` with a field before its type (Amazon Bedrock's invocation metrics)
    type_last: bool = False
    pause_after: int | None = None  # stream: after this many events, a pause of `pause_s` (the client gone: the end)
    # Stream: after this many events, the first half of the next one, written with the one before it (whoever has read
    # the one has read the other), a pause of `pause_s`, then the connection cut
    half_after: int | None = None
    pause_s: float = 60.0
    malformed_after: int | None = None  # stream: after this many events, one whose data is not JSON, then the rest
    cut_after_stop: bool = False  # stream: after `message_stop`, a pause of `pause_s`, then the connection cut
    hold_s: float = 0.0  # before the answer's status and headers: a wait this long (the client gone: no answer)
    split_data: bool = False  # stream: each event's JSON on two `data:` lines, cut after its type (SSE joins them)


@dataclass
class NativeCall:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    half: bytes = b""  # the half event sent before a cut (`Reply.half_after`)
    disconnected: bool = False  # the client left during a pause
    cut: bool = False  # the connection was cut after the last event (`Reply.cut_after_stop`)
    held: bool = False  # held before its headers (`Reply.hold_s`) now


@dataclass
class FakeAnthropic:
    """Scripted replies (the last one repeats) and the calls received."""

    replies: list[Reply] = field(default_factory=lambda: [Reply()])
    calls: list[NativeCall] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"]),
                                 Route("/v1/messages/count_tokens", self._count, methods=["POST"])])  # fmt: skip

    def _record(self, request: Request, body: dict[str, Any]) -> Reply:
        return self._call(request, body)[0]

    def _call(self, request: Request, body: dict[str, Any]) -> tuple[Reply, NativeCall]:
        with self._lock:
            call = NativeCall(request.url.path, dict(request.headers), body)
            self.calls.append(call)
            return (self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]), call

    async def _count(self, request: Request) -> Response:
        self._record(request, orjson.loads(await request.body()))
        return Response(orjson.dumps({"input_tokens": 1234}), media_type="application/json")

    async def _messages(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        reply, call = self._call(request, body)
        if reply.hold_s:
            call.held = True
            left = await _pause(request, reply.hold_s)
            call.held, call.disconnected = False, left
            if left:
                return Response(status_code=499)  # nobody reads it
        if reply.status != 200:
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            return Response(orjson.dumps(error), reply.status, media_type="application/json")
        if reply.whole is not None:
            return Response(orjson.dumps(reply.whole), media_type="application/json")
        message = _message(str(body["model"]), reply.text, reply.usage)
        if not body.get("stream"):
            return Response(orjson.dumps(message), media_type="application/json")
        events = _events(message, reply.cut_after, type_last=reply.type_last, split_data=reply.split_data)
        if reply.end_after is not None:
            events = itertools.islice(events, reply.end_after)
        if reply.error_after is not None:
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded mid-stream"}}
            if reply.type_last:
                error = {"error": {"message": "Overloaded mid-stream", "type": "overloaded_error"},
                         "request_id": "req_011", "type": "error"}  # fmt: skip
            events = itertools.chain(
                itertools.islice(events, reply.error_after), [b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"]
            )
        paced = (reply.pause_after, reply.half_after, reply.malformed_after)
        if any(position is not None for position in paced) or reply.cut_after_stop:
            return _ClosingStreamingResponse(_paced(request, call, reply, events), media_type="text/event-stream")
        return StreamingResponse(events, media_type="text/event-stream")


# An event cut off in the middle of its JSON: no client can read it
MALFORMED = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_de\n\n'


async def _paced(request: Request, call: NativeCall, reply: Reply, events: Iterator[bytes]) -> AsyncIterator[bytes]:
    """The events with the reply's pause, half event or malformed event where it says."""
    try:
        before = b""  # the event written with the half of the next one
        for position, event in enumerate(events):
            if position == reply.malformed_after:
                yield MALFORMED
            if reply.half_after is not None and position + 1 == reply.half_after:
                before = event
                continue
            if position == reply.half_after:
                call.half = event[: len(event) // 2]
                yield before + call.half
            if position in (reply.pause_after, reply.half_after) and await _pause(request, reply.pause_s):
                call.disconnected = True
                return
            if position == reply.half_after:
                raise _StreamCut("cut mid-event on purpose")  # uvicorn drops the connection mid-body
            yield event
        if reply.cut_after_stop and not await _pause(request, reply.pause_s):
            call.cut = True
            raise _StreamCut("cut after the last event on purpose")
    except (asyncio.CancelledError, GeneratorExit):  # the client gone while a pause or a write waited
        call.disconnected = True
        raise


def _message(model: str, text: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": "msg_native", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": usage}  # fmt: skip


def _events(
    message: dict[str, Any], cut_after: int | None, *, type_last: bool = False, split_data: bool = False
) -> Iterator[bytes]:
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}
            for word in re.findall(r"\S+\s*", message["content"][0]["text"])
        ),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        },
        {"type": "message_stop"},
    ]
    if type_last:
        metrics = {"inputTokenCount": 21, "outputTokenCount": 4, "invocationLatency": 512, "firstByteLatency": 180}
        events[-1]["amazon-bedrock-invocationMetrics"] = metrics
        events = [dict(sorted(event.items())) for event in events]
    for position, event in enumerate(events):
        if cut_after is not None and position == cut_after:
            raise _StreamCut("cut on purpose")  # uvicorn drops the connection mid-body
        data = orjson.dumps(event)
        if split_data:
            data = data.replace(b',"', b',\ndata: "', 1)
        yield b"event: " + event["type"].encode() + b"\ndata: " + data + b"\n\n"
