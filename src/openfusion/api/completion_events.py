"""A whole answer told as the event stream its client asked for.

Some servers ignore `stream: true` and answer with one JSON body (a local server without streaming, a proxy that
buffers). Relayed as it is, that JSON reaches a client reading events: the SDKs find no event in it and end with an
empty answer or an error that says nothing of why. Instead the answer is read whole (up to `MAX_WHOLE_BYTES`) and
becomes the stream it would have been, told by its API's own teller: a `chat.completion` here (one chunk with each
choice's whole message as its delta, tool calls numbered as deltas number them, the usage in a last chunk, [DONE]);
an Anthropic message in `messages.whole`, a Responses `response` in `responses.whole`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from openfusion.errors import UpstreamProtocolError, UpstreamStatusError
from openfusion.sse import DONE, encode
from openfusion.upstream.client import Forwarded

# A whole answer is read before any of it is told: this much at most (a stream's own reads have no such bound).
MAX_WHOLE_BYTES = 32 * 1024 * 1024
# What a chunk repeats of the completion it comes from.
_HEAD_FIELDS = ("id", "created", "model", "system_fingerprint", "service_tier")

# The events that tell a whole answer (its JSON, read; None when it is not JSON) as a stream; raises UpstreamError
# for one no client could use.
Teller = Callable[[Any, Forwarded], bytes]


def as_event_stream(forwarded: Forwarded, tell: Teller | None = None) -> Forwarded:
    """`forwarded`, whose body is one whole JSON answer, as an event stream (its content type says so): told by
    `tell`, a chat completion's teller unless another is given."""
    forwarded.headers["content-type"] = "text/event-stream"
    forwarded.body = _events(forwarded.body, forwarded, tell or completion_events)
    return forwarded


async def _events(body: AsyncIterator[bytes], forwarded: Forwarded, tell: Teller) -> AsyncIterator[bytes]:
    parts: list[bytes] = []
    size = 0
    async for block in body:
        size += len(block)
        if size > MAX_WHOLE_BYTES:
            what = f"answered a streamed request with a whole answer over {MAX_WHOLE_BYTES} bytes"
            raise whole_error(forwarded, what)
        parts.append(block)
    try:
        answer = orjson.loads(b"".join(parts))
    except orjson.JSONDecodeError:
        answer = None
    yield tell(answer, forwarded)


def completion_events(data: Any, forwarded: Forwarded) -> bytes:
    """The events of a stream that says what the completion `data` says."""
    if isinstance(data, dict) and isinstance(data.get("error"), dict):  # a 200 that carries an error object
        message = data["error"].get("message")
        slug, provider = _who(forwarded)
        reason = message if isinstance(message, str) and message else "unknown error"
        raise UpstreamStatusError(f"{slug} failed: {reason[:1000]}", model=slug, provider=provider)
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise whole_error(forwarded, "answered a streamed request with JSON that is not a chat completion")
    head = {"object": "chat.completion.chunk"} | {key: data[key] for key in _HEAD_FIELDS if key in data}
    choices = [_delta(position, choice) for position, choice in enumerate(data["choices"]) if isinstance(choice, dict)]
    events = [encode({**head, "choices": choices})]
    if isinstance(data.get("usage"), dict):
        events.append(encode({**head, "choices": [], "usage": data["usage"]}))
    events.append(DONE)
    return b"".join(events)


def _delta(position: int, choice: dict[str, Any]) -> dict[str, Any]:
    message = choice.get("message")
    delta = {key: value for key, value in message.items() if value is not None} if isinstance(message, dict) else {}
    if isinstance(delta.get("tool_calls"), list):
        calls = [call for call in delta["tool_calls"] if isinstance(call, dict)]
        delta["tool_calls"] = [{"index": number, **call} for number, call in enumerate(calls)]
    told: dict[str, Any] = {"index": choice.get("index", position), "delta": delta}
    told["finish_reason"] = choice.get("finish_reason")
    if "logprobs" in choice:
        told["logprobs"] = choice["logprobs"]
    return told


def _who(forwarded: Forwarded) -> tuple[str, str]:
    trace = forwarded.trace
    return (trace.model, trace.provider) if trace is not None else ("upstream", "")


def whole_error(forwarded: Forwarded, what: str) -> UpstreamProtocolError:
    """A whole answer no stream can tell: what the provider did, as `upstream_invalid_response`."""
    slug, provider = _who(forwarded)
    return UpstreamProtocolError(f"{slug} ({provider}) {what}", model=slug, provider=provider)
