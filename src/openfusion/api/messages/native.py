"""Pass-through to a provider that speaks Anthropic Messages itself: the request forwarded, the answer relayed.

The body goes as the client sent it, less openfusion's own fields (the fusion plugin, `models`),
OpenRouter's (`provider`, `plugins`, `reasoning`...: a provider other than OpenRouter refuses them) and the
thinking blocks the provider did not sign (openfusion's own, from a fused or translated answer
earlier in the conversation, or unsigned ones: the provider refuses any of them), with the
client's `anthropic-version` and `anthropic-beta` headers unchanged and the provider's key as
`x-api-key`. The relayed stream is watched for `message_start` and `message_delta`, whose usage
goes to the activity record; a stream the provider breaks off (a dropped connection, a read timeout, an event that is
not JSON) or the end of the shutdown grace period stops ends with an `error` event. Events are relayed whole
(`sse_events`): the error follows what the client has as it is, and an event that is not JSON is never relayed. A
provider that answers a streamed request with one whole message has it told as the stream it would have been
(`whole`), watched the same way. A token count (`count_native`) is asked with only the fields the
provider's count takes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from openfusion.api.completion_events import as_event_stream
from openfusion.api.deps import AppState
from openfusion.api.dispatch import Exchange
from openfusion.api.event_stream import EventStreamResponse
from openfusion.api.ledger import Ledger
from openfusion.api.messages.errors import error_event
from openfusion.api.messages.whole import message_events
from openfusion.api.messages.writer import SIGNATURE_PREFIX
from openfusion.api.passthrough import (
    OPENROUTER_FIELDS,
    SSE_HEADERS,
    forward_first_success,
    provider_failed,
    relay_failed,
    without_openfusion_fields,
)
from openfusion.errors import UpstreamError, UpstreamProtocolError
from openfusion.protocol import ChatRequest, Usage, reported_cost, token_count
from openfusion.sse_events import WholeEvents, event_data, events_before
from openfusion.upstream.client import MESSAGES_COUNT_PATH, MESSAGES_PATH, Forwarded

# The client's headers a Messages provider reads; `anthropic-version` is required by Anthropic.
_FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")
_DEFAULT_VERSION = "2023-06-01"
_START, _DELTA, _STOP = b'"message_start"', b'"message_delta"', b'"message_stop"'
_ERROR_EVENT = b'"type":"error"'  # a provider's own error event ends its stream too


def speaks_messages(state: AppState, chat: ChatRequest) -> bool:
    """Whether every model the request may go to (fallbacks included) has a provider that takes Messages requests."""
    return all(state.registry.resolve(model).provider.config.messages for model in chat.candidate_models())


def anthropic_headers(request: Request) -> dict[str, str]:
    """The client's Anthropic headers, as it sent them."""
    headers = {name: value for name in _FORWARDED_HEADERS if (value := request.headers.get(name)) is not None}
    headers.setdefault("anthropic-version", _DEFAULT_VERSION)
    return headers


# OpenRouter's own fields, and its `reasoning` (Anthropic's is `thinking`): for OpenRouter alone.
OPENROUTER_MESSAGES_FIELDS = OPENROUTER_FIELDS | {"reasoning"}


async def forward_native(exchange: Exchange, raw: dict[str, Any]) -> Response:
    """Forward the request (with the `models` fallbacks) and relay the answer as it comes."""
    chat, ledger = exchange.chat, exchange.ledger
    body = _without_foreign_thinking(without_openfusion_fields(chat, raw))
    forwarded = await forward_first_success(exchange.state, chat, body, path=MESSAGES_PATH,
                                            headers=anthropic_headers(exchange.request),
                                            openrouter_fields=OPENROUTER_MESSAGES_FIELDS)  # fmt: skip
    if forwarded.status_code >= 400:
        ledger.status, ledger.failure_reason = "error", f"upstream_{forwarded.status_code}"
    elif chat.stream:
        if "event-stream" not in forwarded.headers.get("content-type", "").lower():  # it ignored `stream: true`
            forwarded = as_event_stream(forwarded, message_events)
        relay = ledger.closing(
            _relay(forwarded, ledger=ledger, model=chat.model),
            upstream=forwarded,
            render_error=error_event,  # the end of the grace period
        )
        sse_headers = {**forwarded.headers, **SSE_HEADERS}
        return EventStreamResponse(relay, status_code=forwarded.status_code, headers=sse_headers)
    try:
        content = b"".join([chunk async for chunk in forwarded.body])
        if forwarded.status_code < 400 and (message := _json(content)) is not None:
            _record(forwarded, ledger, message, message.get("usage"))  # before the call's trace is closed
    finally:
        await forwarded.aclose()
    return Response(content, status_code=forwarded.status_code, headers=forwarded.headers)


# The fields Anthropic's count_tokens takes (its beta ones among them, which the client's `anthropic-beta` turns on).
# It refuses any other, and the rest of a Messages request counts for nothing: `max_tokens`, sampling and `stream` (no
# model runs), OpenRouter's own fields (`provider`, `transforms`, `usage`, `plugins`: meant for OpenRouter alone).
_COUNTED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "cache_control",
        "output_config",
        "speed",
        "context_management",
        "mcp_servers",
        "compaction",
        "billing_policy",
    }
)


async def count_native(state: AppState, chat: ChatRequest, raw: dict[str, Any], request: Request) -> Response:
    """The provider's own token count for the request, asked with only the fields its count takes."""
    body = _without_foreign_thinking({key: value for key, value in raw.items() if key in _COUNTED_FIELDS})
    forwarded = await state.upstream.forward(chat.model, body, stream=False, path=MESSAGES_COUNT_PATH,
                                             headers=anthropic_headers(request))  # fmt: skip
    try:
        content = b"".join([chunk async for chunk in forwarded.body])
    finally:
        await forwarded.aclose()
    return Response(content, status_code=forwarded.status_code, headers=forwarded.headers)


async def _relay(forwarded: Forwarded, *, ledger: Ledger, model: str) -> AsyncIterator[bytes]:
    """The relayed stream, whole events only (`WholeEvents`): what the client has always ends where an event does, so
    the `error` event that ends a stream cut short follows it as it is."""
    complete = ended = False
    events = WholeEvents()
    waiting = events.waiting  # (a local: one look up fewer a read)
    usage: dict[str, Any] = {}
    confirms = ledger.confirms
    try:
        async for chunk in forwarded.body:
            if waiting or chunk[-2:] != b"\n\n":  # the usual read ends an event: one look
                chunk = events.cut(chunk)
                if not chunk:
                    continue
            was_ended = ended
            found = event_data(chunk)
            for data in found:
                # Anthropic's events are JSON objects: one that does not end as one (cut, or a proxy's page) no client
                # can read. A one-byte slice, as below; after the end, nothing is read.
                if data[-1:] != b"}" and not ended and _json(data) is None:
                    if before := events_before(chunk, found.index(data)):
                        yield before  # the events before it; it and what follows, no client could read
                    raise _not_json(forwarded, model)
                # Per event, so `find` rather than `in`: CPython's `in` on bytes first tries the needle as an int and
                # builds (then drops) an error doing so; with `any()` over the marks, 1.8 µs a line against 0.5.
                head = data[:34]
                # Its type not first (`{"type"`): named elsewhere, if at all. A one-byte slice (data of any length has
                # one): ~800 instructions a line (callgrind), against ~1,100 for `len` and an index and ~1,300 for
                # startswith.
                if head[2:3] != b"t":
                    head = _named_type(data)
                failed = head.find(_ERROR_EVENT) >= 0
                ended = ended or failed or head.find(_STOP) >= 0
                if failed:
                    provider_failed(forwarded, ledger, (_json(data) or {}).get("error"))
                delta = head.find(_DELTA) >= 0
                if delta or head.find(_START) >= 0:
                    event = _json(data) or {}
                    message = event.get("message") if isinstance(event.get("message"), dict) else {}
                    for source in (message.get("usage"), event.get("usage")):  # start, then the cumulative delta
                        if isinstance(source, dict):
                            usage.update({k: v for k, v in source.items() if isinstance(v, int | float | dict)})
                    # `message_start`'s output count is a placeholder (1): the usage is the answer's once a
                    # `message_delta` says so. A stream left before it used what it generated, which nobody reported.
                    _record(forwarded, ledger, message, usage if delta else None)
            if confirms and ended and not was_ended:
                # Clients stop reading at `message_stop`: the answer is whole, its record goes first.
                forwarded.answered()
                await ledger.commit()
            yield chunk
        complete = True
        if not ended:  # a clean close before `message_stop`: the answer is cut short all the same
            raise UpstreamProtocolError(f"{model}: the stream ended before message_stop", model=model,
                                        provider=forwarded.trace.provider if forwarded.trace else "")  # fmt: skip
        if rest := events.rest():  # what the provider left unfinished after its end: as it came
            yield rest
    except UpstreamError as exc:  # the provider broke off mid-stream: say so rather than end silently
        complete = True
        if ended:  # after its last event (`message_stop`, or its own error): the client has all there was
            return
        relay_failed(forwarded, ledger, exc)
        yield error_event(exc)
    finally:
        await forwarded.aclose(complete=complete)


def _not_json(forwarded: Forwarded, model: str) -> UpstreamProtocolError:
    provider = forwarded.trace.provider if forwarded.trace else ""
    return UpstreamProtocolError(f"{model}: the stream sent an event that is not JSON", model=model, provider=provider)


def _named_type(data: bytes) -> bytes:
    """The type an event's data names elsewhere than first, as the start of an event Anthropic writes names it
    (`"type":"message_stop"`), or b"" for none of the events watched.

    A server that writes its events' fields in another order than Anthropic (the anthropic SDK's own event models,
    whose fields are in alphabetical order: `type` after a `message_start`'s message, amid a `message_delta`, after an
    `error`'s error and after the fields a `message_stop` may carry, Amazon Bedrock's invocation metrics) names it
    anywhere, its value of any size before it: the event is read whole, when it may be one of those watched.
    """
    if data.find(b'"message_') < 0 and data.find(b'"error"') < 0:
        return b""  # a content block's event (most events): none of those watched
    kind = (_json(data) or {}).get("type")
    return b'"type":"' + kind.encode() + b'"' if isinstance(kind, str) else b""


def _record(forwarded: Forwarded, ledger: Ledger, message: dict[str, Any], usage: Any) -> None:
    """The answer's model and usage (None: not known yet), for the activity record.

    Cache reads and writes count as input, and are told apart (as OpenRouter's `prompt_tokens_details` tells them):
    a provider bills them at their own prices. So are the writes kept for an hour (`cache_creation`'s split of them),
    billed dearer than 5-minute ones; without the split, their share is left unknown (the request says what it asked
    for: `activity.cost`). A `cost` the provider reported (OpenRouter's) is kept.
    """
    if isinstance(message.get("model"), str):
        ledger.model = message["model"]
    if forwarded.trace is None or not isinstance(usage, dict):
        return
    read, written = token_count(usage, "cache_read_input_tokens"), token_count(usage, "cache_creation_input_tokens")
    split = usage.get("cache_creation")
    long = token_count(split, "ephemeral_1h_input_tokens")
    # The split may be all there is (a provider that leaves out the total): the total is at least its sum.
    written = max(written, token_count(split, "ephemeral_5m_input_tokens") + long)
    prompt = token_count(usage, "input_tokens") + read + written
    completion = token_count(usage, "output_tokens")
    details = {"cached_tokens": read, "cache_write_tokens": written}
    if isinstance(split, dict) and "ephemeral_1h_input_tokens" in split:  # else unknown, not none (`cost`)
        details["cache_write_1h_tokens"] = long
    forwarded.trace.usage = Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
        cost=reported_cost(usage.get("cost")), prompt_tokens_details=details,
    )  # fmt: skip


def _without_foreign_thinking(body: dict[str, Any]) -> dict[str, Any]:
    """The body without the assistant's thinking blocks that carry no signature of the provider's."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not any(_foreign_thinking(m) for m in messages):
        return body  # the usual case: forwarded exactly as sent
    kept = []
    for message in messages:
        if _foreign_thinking(message):
            blocks = [b for b in message["content"] if not _is_foreign_thinking(b)]
            message = {**message, "content": blocks} if blocks else message  # never an empty turn
        kept.append(message)
    return {**body, "messages": kept}


def _foreign_thinking(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and message.get("role") == "assistant"
        and isinstance(message.get("content"), list)
        and any(_is_foreign_thinking(block) for block in message["content"])
    )


def _is_foreign_thinking(block: Any) -> bool:
    if not isinstance(block, dict) or block.get("type") != "thinking":
        return False
    signature = block.get("signature")
    return not isinstance(signature, str) or not signature or signature.startswith(SIGNATURE_PREFIX)


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
