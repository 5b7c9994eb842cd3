"""Helpers for component tests: upstream response builders and a scripted, respx-driven fake provider."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import http_writer

from openfusion.settings import ProviderConfig, Settings
from openfusion.upstream.client import UpstreamClient
from openfusion.upstream.providers import ProviderRegistry
from openfusion.upstream.read_timeout import LazyReadTimeout

# The `make_client` fixture: make_client(registry=None, **retry_settings) -> UpstreamClient
MakeClient = Callable[..., UpstreamClient]

UP_KEY = "sk-secret-123"
BASE_URL = "https://up.test/v1"
COMPLETIONS_URL = f"{BASE_URL}/chat/completions"
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}

VALID_ANALYSIS: dict[str, Any] = {
    "consensus": ["Paris is the capital of France."],
    "contradictions": [
        {"topic": "population", "stances": [{"model": "up/a", "stance": "2M"}, {"model": "up/b", "stance": "12M"}]}
    ],
    "partial_coverage": [{"models": ["up/a"], "point": "history"}],
    "unique_insights": [{"model": "up/c", "insight": "the metro area"}],
    "blind_spots": ["nobody cited a source"],
}


def make_registry(**provider: Any) -> ProviderRegistry:
    """A registry with one provider `up` (https://up.test/v1, key sk-secret-123) serving `up/*`."""
    config = {
        "name": "up",
        "base_url": BASE_URL,
        "api_key_env": "UP_KEY",
        "models": ["up/*"],
        "strip_prefix": True,
        **provider,
    }
    settings = Settings(providers=[ProviderConfig(**config)], builtin_providers=False)
    return ProviderRegistry.from_settings(settings, {"UP_KEY": UP_KEY})


def sent_json(request: httpx.Request) -> dict[str, Any]:
    """The JSON body of a request the client sent."""
    return orjson.loads(request.content)


# --- non-streamed responses -------------------------------------------------------------------------------------------


def completion_json(
    content: str = "Hello!",
    *,
    model: str | None = "served-model",
    usage: dict[str, Any] | None = None,
    finish_reason: str = "stop",
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": usage if usage is not None else USAGE,
    }
    if model is not None:
        body["model"] = model
    return body


def completion_response(content: str = "Hello!", **kwargs: Any) -> httpx.Response:
    return httpx.Response(200, json=completion_json(content, **kwargs))


def error_response(
    status: int, message: str = "upstream trouble", *, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message, "code": status}}, headers=headers)


# --- streamed responses -----------------------------------------------------------------------------------------------


def chunk_json(
    content: str | None = None,
    *,
    finish_reason: str | None = None,
    usage: dict[str, Any] | None = None,
    model: str = "served-model",
) -> dict[str, Any]:
    choices = []
    if content is not None or finish_reason is not None:
        delta = {"content": content} if content is not None else {}
        choices.append({"index": 0, "delta": delta, "finish_reason": finish_reason})
    body: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def sse_bytes(chunks: Iterable[dict[str, Any]], *, done: bool = True, newline: bytes = b"\n") -> bytes:
    events = [b"data: " + orjson.dumps(chunk) + newline + newline for chunk in chunks]
    if done:
        events.append(b"data: [DONE]" + newline + newline)
    return b"".join(events)


class ByteStream(httpx.AsyncByteStream):
    """A response body sent in the given pieces; records how far it got and whether it was closed."""

    def __init__(self, parts: Iterable[bytes | BaseException], *, pause_s: float = 0.0) -> None:
        self.parts = list(parts)
        self.pause_s = pause_s
        self.sent = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            if isinstance(part, BaseException):
                raise part
            if self.pause_s:
                await asyncio.sleep(self.pause_s)
            self.sent += 1
            yield part

    async def aclose(self) -> None:
        self.closed = True


def sse_response(body: bytes | ByteStream, *, status: int = 200) -> httpx.Response:
    stream = body if isinstance(body, ByteStream) else ByteStream([body])
    return httpx.Response(status, headers={"content-type": "text/event-stream"}, stream=stream)


def split_at(data: bytes, *cuts: int) -> list[bytes]:
    """`data` cut at the given offsets."""
    bounds = [0, *sorted(cuts), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds) if end > start]


# --- a scripted provider for pipeline runs ----------------------------------------------------------------------------


@dataclass
class Reply:
    """How the fake provider answers one call: a completion (or SSE stream when asked to stream) or an error."""

    content: str = ""
    status: int = 200
    usage: dict[str, Any] | None = field(default_factory=lambda: dict(USAGE))
    model: str | None = None  # the model the upstream reports; default: the upstream name it was asked for
    delay_s: float = 0.0
    chunk_pause_s: float = 0.0  # streamed replies: pause before each SSE event
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Call:
    """One request the fake provider received."""

    model: str
    body: dict[str, Any]
    request: httpx.Request
    started: float
    ended: float = 0.0
    cancelled: bool = False  # the caller gave up while the fake was still "thinking"

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body["messages"]

    @property
    def system(self) -> str:
        return self.messages[0]["content"]

    @property
    def last_user(self) -> str:
        return [m for m in self.messages if m["role"] == "user"][-1]["content"]


class ScriptedUpstream:
    """A respx side effect answering per requested (upstream) model name; the last reply of a script repeats."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Reply]] = {}
        self.calls: list[Call] = []
        self.streams: list[ByteStream] = []  # the bodies of streamed replies, to check they were closed

    def script(self, model: str, *replies: Reply | str) -> None:
        self.scripts[model] = [Reply(content=r) if isinstance(r, str) else r for r in replies]

    def calls_to(self, model: str) -> list[Call]:
        return [call for call in self.calls if call.model == model]

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = sent_json(request)
        call = Call(model=body["model"], body=body, request=request, started=time.perf_counter())
        self.calls.append(call)
        script = self.scripts.get(call.model)
        if not script:
            return error_response(404, f"the fake has no script for {call.model!r}")
        reply = script.pop(0) if len(script) > 1 else script[0]
        if reply.delay_s:
            try:
                await asyncio.sleep(reply.delay_s)
            except asyncio.CancelledError:
                call.cancelled = True
                raise
        call.ended = time.perf_counter()
        if reply.status >= 400:
            return error_response(reply.status, reply.content or "scripted failure", headers=reply.headers)
        model = reply.model or call.model
        if body.get("stream"):
            words = reply.content.split(" ")
            pieces = [chunk_json(w if i == 0 else " " + w, model=model) for i, w in enumerate(words)]
            pieces.append(chunk_json(finish_reason="stop", model=model))
            if reply.usage is not None:
                pieces.append(chunk_json(usage=reply.usage, model=model))
            stream = ByteStream([sse_bytes([piece], done=False) for piece in pieces], pause_s=reply.chunk_pause_s)
            stream.parts.append(b"data: [DONE]\n\n")
            self.streams.append(stream)
            return sse_response(stream)
        return httpx.Response(
            200, json=completion_json(reply.content, model=model, usage=reply.usage or {}), headers=reply.headers
        )


# Python 3.12 before 3.12.9 and 3.13 before 3.13.2: aiohttp itself joins a request's head and body (their asyncio's
# writelines could buffer without bound), and openfusion leaves its choice alone (`upstream/vectored_writes.py`).
JOINS_ON_ITS_OWN = pytest.mark.skipif(
    sys.version_info >= (3, 12) and getattr(http_writer, "SKIP_WRITELINES", True),
    reason="aiohttp joins a request's head and body on this Python, by its own choice",
)


class RecordingTransport:
    """An upstream connection's transport that remembers each write it is given, buffer by buffer."""

    def __init__(self, transport: Any, writes: list[list[bytes]]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: Any) -> None:
        self._writes.append([bytes(data)])
        self._transport.write(data)

    def writelines(self, buffers: Any) -> None:
        buffers = list(buffers)
        self._writes.append([bytes(buffer) for buffer in buffers])
        self._transport.writelines(buffers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def record_upstream_writes(monkeypatch: pytest.MonkeyPatch) -> list[list[bytes]]:
    """Each write given to an upstream connection's transport from now on, buffer by buffer; aiohttp's switch set as
    aiohttp leaves it, for the upstream session to clear (`upstream/vectored_writes.py`)."""
    writes: list[list[bytes]] = []
    made = LazyReadTimeout.connection_made

    def recorded(protocol: LazyReadTimeout, transport: Any) -> None:
        made(protocol, RecordingTransport(transport, writes))

    monkeypatch.setattr(LazyReadTimeout, "connection_made", recorded)
    if sys.version_info < (3, 12):
        monkeypatch.setattr(http_writer, "SKIP_WRITELINES", True)
    return writes
