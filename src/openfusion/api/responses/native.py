"""Pass-through to a provider that speaks the Responses API itself: the request forwarded, the answer relayed.

The body goes as the client sent it, less openfusion's own fields and OpenRouter's (`provider`, `plugins`...) for
a provider other than OpenRouter, and with `store: false` (unless the provider may keep it); `previous_response_id`
is always resolved here (from this server's stored responses, per key) and sent as the conversation it names,
so a key can only ever continue its own responses. The relayed stream is watched for its
terminal event, `response.completed`, `response.incomplete` or `response.failed`: its usage goes to the activity
record, and the response is stored before that event reaches the client, whatever its status, as the whole answer
to a request that does not stream is (OpenAI keeps each: a follow-up may continue a response cut off at
`max_output_tokens`, and `GET /v1/responses/{id}` tells a failed one). A stream that stops before its terminal
event (the provider broke it off: its connection lost, its reads timed out, it closed early or sent its own `error`
event; or the end of the shutdown grace period stopped it) ends as OpenAI ends a stream that fails: with
`response.failed`, the response `response.created` gave with the output items done since, which is kept as the
translated stream keeps its own (`_Begun`): events are relayed whole (`sse_events`), so it follows what the client has
as it is, and an event that is not JSON is never relayed. The response the client gets says it is stored when
openfusion keeps it (`store_mark`).
A provider that answers a streamed request with one whole response has it told as the stream it would have been
(`whole`), watched the same way.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol

import orjson
from starlette.responses import Response

from openfusion.api.completion_events import as_event_stream
from openfusion.api.deps import AppState
from openfusion.api.dispatch import Exchange
from openfusion.api.event_stream import EventStreamResponse
from openfusion.api.ledger import Ledger
from openfusion.api.passthrough import (
    OPENROUTER_FIELDS,
    SSE_HEADERS,
    forward_first_success,
    provider_failed,
    relay_failed,
    without_openfusion_fields,
)
from openfusion.api.responses.store_mark import keepable, mark_stored, marked_events
from openfusion.api.responses.translation import Translated
from openfusion.api.responses.whole import response_events
from openfusion.api.shutdown import BACKSTOP_S
from openfusion.errors import OpenFusionError, UpstreamError, UpstreamProtocolError
from openfusion.protocol import ChatRequest, Usage, reported_cost, token_count
from openfusion.sse import dumps
from openfusion.sse_events import WholeEvents, event_data, events_before
from openfusion.upstream.client import RESPONSES_PATH, Forwarded


class Keep(Protocol):
    """Keeps a response (when responses are kept), waiting for the store up to `timeout_s` (its own default: None)."""

    def __call__(self, response: dict[str, Any], timeout_s: float = ...) -> Awaitable[None]: ...


# Any of these ends a Responses stream (the last two: a failure); a stream that stops before one is cut short.
_COMPLETED, _INCOMPLETE = b'"response.completed"', b'"response.incomplete"'
_FAILED, _ERROR = b'"response.failed"', b'"type":"error"'


def speaks_responses(exchange: Exchange) -> bool:
    """Whether every provider the request may go to takes Responses API requests itself (False when a model is served
    by none: the translated request says so)."""
    try:
        return provider_speaks_responses(exchange.state, exchange.chat)
    except OpenFusionError:
        return False


def provider_speaks_responses(state: AppState, chat: ChatRequest) -> bool:
    """Whether every model the request may go to (its `models` fallbacks included) has a provider that takes Responses
    API requests itself (404 for a model none serves): a chat-only fallback must get chat completions."""
    return all(state.registry.resolve(model).provider.config.responses for model in chat.candidate_models())


async def forward_native(exchange: Exchange, translated: Translated, *, keep: Keep, store: bool) -> Response:
    """Forward the request (with the `models` fallbacks) and relay the answer as it comes.

    With `store` (openfusion keeps the response), the response the client gets says so (`store_mark`).
    """
    chat, ledger = exchange.chat, exchange.ledger
    body = native_body(translated, provider_keeps=provider_keeps(exchange.state, chat))
    forwarded = await forward_first_success(
        exchange.state, chat, body, path=RESPONSES_PATH, openrouter_fields=OPENROUTER_FIELDS
    )
    if forwarded.status_code >= 400:
        ledger.status, ledger.failure_reason = "error", f"upstream_{forwarded.status_code}"
    elif chat.stream:
        if "event-stream" not in forwarded.headers.get("content-type", "").lower():  # it ignored `stream: true`
            forwarded = as_event_stream(forwarded, response_events)
        numbering = _Numbering()
        begun = _Begun()
        relay = _relay(forwarded, ledger=ledger, keep=keep, numbering=numbering, store=store, begun=begun)

        async def keep_stopped() -> None:
            # Within half the time left before the server's backstop: its client still gets `response.failed` if the
            # store is slow (as the translated stream's).
            if begun.failed is not None:
                await keep(begun.failed, timeout_s=BACKSTOP_S / 2)

        relay = ledger.closing(
            relay,
            upstream=forwarded,
            render_error=lambda error: begun.stopped(error, numbering),  # the end of the grace period
            keep_stopped=keep_stopped,
        )
        sse_headers = {**forwarded.headers, **SSE_HEADERS}
        return EventStreamResponse(relay, status_code=forwarded.status_code, headers=sse_headers)
    try:
        content = b"".join([chunk async for chunk in forwarded.body])
        response = _json(content) if forwarded.status_code < 400 else None
        if response is not None:
            _record(forwarded, ledger, response)  # before the call's trace is closed
            if response.get("status") == "failed":  # as the `response.failed` that ends a stream: the request failed
                provider_failed(forwarded, ledger, response.get("error"))
    finally:
        await forwarded.aclose()
    if response is not None and keepable(response):
        if store and mark_stored(response):
            content = orjson.dumps(response)
        await keep(response)
    return Response(content, status_code=forwarded.status_code, headers=forwarded.headers)


def provider_keeps(state: AppState, chat: ChatRequest) -> bool:
    """Whether every provider the request may go to (its `models` fallbacks too) may keep it (`responses_store`)."""
    for model in chat.candidate_models():
        try:
            if not state.registry.resolve(model).provider.config.responses_store:
                return False
        except OpenFusionError:  # served by none: its forward fails on its own account
            return False
    return True


def native_body(translated: Translated, *, provider_keeps: bool = False) -> dict[str, Any]:
    """The client's body for the provider: openfusion's fields out, a stored conversation spelt out.

    Unless the provider may keep it (`provider_keeps`), it goes with `store: false`: openfusion keeps responses
    itself (`previous_response_id` is resolved here, per key), so a copy on the operator's account serves no client
    and keeps every tenant's conversation there. Input items then go without their `id`: the provider stored none
    of them, and refuses an id it does not know ("Item with id … not found"); their content carries the
    conversation (a reasoning item its `encrypted_content`, when the client asked for it).
    """
    body = without_openfusion_fields(translated.chat, translated.raw)
    body.pop("previous_response_id", None)
    if translated.request.previous_response_id is not None or isinstance(body.get("input"), list):
        body["input"] = [item for item in translated.items if _forwardable(item)]
    if not provider_keeps:
        body["store"] = False
        if isinstance(body.get("input"), list):
            body["input"] = [_without_id(item) for item in body["input"]]
    return body


def _without_id(item: Any) -> Any:
    """An input item without its `id` (a copy: the stored conversation shares the item)."""
    if isinstance(item, dict) and "id" in item:
        return {key: value for key, value in item.items() if key != "id"}
    return item


def _forwardable(item: dict[str, Any]) -> bool:
    """Items the provider can take: not fusion's own, nor reasoning it cannot verify (no encrypted content)."""
    kind = item.get("type")
    if kind == "openrouter:fusion":
        return False
    return kind != "reasoning" or bool(item.get("encrypted_content"))


async def _relay(
    forwarded: Forwarded,
    *,
    ledger: Ledger,
    keep: Keep,
    numbering: _Numbering,
    store: bool,
    begun: _Begun,
) -> AsyncIterator[bytes]:
    """The relayed stream, whole events only (`WholeEvents`): what the client has always ends where an event does, so
    the event that ends a stream cut short follows it as it is. With `store`, each event that carries the response
    says it is stored (`store_mark`)."""
    complete = ended = False  # `ended`: by the provider's terminal event
    said: dict[str, Any] | None = None  # the provider's `error` event, which OpenAI follows with `response.failed`
    broken: UpstreamError | None = None
    events = WholeEvents()
    waiting = events.waiting  # (a local: one look up fewer a read)
    confirms = ledger.confirms
    try:
        async for chunk in forwarded.body:
            if waiting or chunk[-2:] != b"\n\n":  # the usual read ends an event: one look
                chunk = events.cut(chunk)
                if not chunk:
                    continue
            if store:
                chunk = marked_events(chunk)
            was_ended = ended
            found = event_data(chunk)
            for data in found:
                # Every event a JSON object: one look at its last byte, `}`.
                if data[-1:] != b"}" and _malformed(data):
                    if before := events_before(chunk, found.index(data)):
                        yield before  # the events before it; it and what follows, no client could read
                    raise _not_json(forwarded, ledger)
                numbering.see(data)
                # Per event, so `find` rather than `in`: CPython's `in` on bytes first tries the needle as an int and
                # builds (then drops) an error doing so.
                head = _type_end(data)
                begun.see(head, data)
                answered = head.find(_COMPLETED) >= 0 or head.find(_INCOMPLETE) >= 0  # the response, whole or cut
                failed = not answered and head.find(_FAILED) >= 0
                if answered or failed:
                    ended = True
                    event = _json(data) or {}
                    response = event.get("response")
                    if isinstance(response, dict):  # that of response.failed too: its usage still counts
                        _record(forwarded, ledger, response)
                        if keepable(response):  # before the client hears it is done; GET tells how it ended
                            await keep(response)
                    if failed:
                        error = response.get("error") if isinstance(response, dict) else event
                        provider_failed(forwarded, ledger, error)
                elif head.find(_ERROR) >= 0:  # its stream goes on to `response.failed`, or openfusion ends it so
                    said = _json(data) or {}
                    provider_failed(forwarded, ledger, said["error"] if isinstance(said.get("error"), dict) else said)
            if confirms and ended and not was_ended:
                # Clients stop reading at the terminal event: the answer is whole, its record goes first.
                forwarded.answered()
                await ledger.commit()
            yield chunk
        complete = True
        if ended and (rest := events.rest()):  # what the provider left unfinished after its end: as it came
            yield rest
        if not ended and said is None:  # the provider closed the stream before its end: not to be taken as whole
            broken = UpstreamProtocolError(
                f"{ledger.requested_model}: the stream ended before the response was complete",
                model=ledger.requested_model, provider=forwarded.trace.provider if forwarded.trace else "",
            )  # fmt: skip
            relay_failed(forwarded, ledger, broken)
    except UpstreamError as exc:  # the provider broke off mid-stream (cut off, stalled, timed out): say so
        complete = True
        if not ended and said is None:  # (after its own end or error event, that says why it failed)
            broken = exc
            relay_failed(forwarded, ledger, exc)
    finally:
        await forwarded.aclose(complete=complete)
    if not ended and (broken is not None or said is not None):
        ending = await _broken_off(ledger=ledger, keep=keep, numbering=numbering, begun=begun, broken=broken, said=said)
        if ending:
            yield ending


async def _broken_off(
    *,
    ledger: Ledger,
    keep: Keep,
    numbering: _Numbering,
    begun: _Begun,
    broken: UpstreamError | None,
    said: dict[str, Any] | None,
) -> bytes:
    """The end of a stream the provider broke off before its terminal event (`broken`), or after its own `error` event
    (`said`), both recorded already: as OpenAI ends a stream that fails, `response.failed` with the response so far,
    kept as any other that failed, its record committed before it is told."""
    error = _said_error(said) if said is not None else broken
    assert error is not None
    ending = begun.stopped(error, numbering, told=said is not None)
    if begun.failed is not None:
        await keep(begun.failed)
    await ledger.commit()  # clients stop reading at the terminal event: the record goes first
    return ending


def _malformed(data: bytes) -> bool:
    """Whether an event's data is not a JSON object (nor the `[DONE]` a compatible server may end with)."""
    data = data.strip()
    return data != b"[DONE]" and not (data.endswith(b"}") and _json(data) is not None)


def _not_json(forwarded: Forwarded, ledger: Ledger) -> UpstreamProtocolError:
    trace = forwarded.trace
    slug, provider = (trace.model, trace.provider) if trace is not None else (ledger.requested_model, "")
    return UpstreamProtocolError(f"{slug} ({provider}) sent a stream event that is not JSON", model=slug,
                                 provider=provider)  # fmt: skip


def _said_error(event: dict[str, Any]) -> OpenFusionError:
    """The provider's `error` event (its fields, or an `error` object in it) as the error its response failed with."""
    error = event.get("error")
    fields = error if isinstance(error, dict) else event
    code, message = fields.get("code"), fields.get("message")
    return OpenFusionError(message if isinstance(message, str) and message else "The provider failed mid-stream.",
                           code=code if isinstance(code, str) and code else "server_error")  # fmt: skip


class _Numbering:
    """The provider's sequence numbers, followed so that the event openfusion adds to its stream (cut short, broken
    off, the shutdown's end) comes next in order: clients check that they only go up."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = -1

    def see(self, data: bytes) -> None:
        """Note an event's `sequence_number` (from its data, which its number usually ends)."""
        at = data.rfind(_SEQUENCE)
        if at >= 0:
            found = _NUMBER.match(data, at + len(_SEQUENCE))
            if found is not None:
                self.last = max(self.last, int(found.group(1)))

    def error_event(self, error: OpenFusionError) -> bytes:
        """The Responses API's `error` event, numbered after the last event relayed."""
        event = {"type": "error", "code": error.code, "message": error.message, "param": None,
                 "sequence_number": self.last + 1}  # fmt: skip
        return b"event: error\ndata: " + dumps(event) + b"\n\n"


class _Begun:
    """What a relayed stream told of its response before its end: the response as `response.created` gave it, and the
    output items done since. A stream stopped before its terminal event (the provider broke it off, or the end of the
    shutdown grace period came) ends with that response, failed (`stopped`), kept as any other that failed; the text
    of an item still being written is not in it."""

    __slots__ = ("failed", "items", "response")

    def __init__(self) -> None:
        self.response: dict[str, Any] | None = None
        self.items: list[Any] = []
        self.failed: dict[str, Any] | None = None  # the response `stopped` ended, to keep

    def see(self, head: bytes, data: bytes) -> None:
        """Note an event (its data, `head` the end of it that names its type) that carries the response or an output
        item done: a few a response, parsed; the others (its deltas) only looked at."""
        if self.response is None:  # `response.created` comes first: one look an event, not two
            if head.find(_CREATED) >= 0:
                response = (_json(data) or {}).get("response")
                if isinstance(response, dict):
                    self.response = response
        elif head.find(_ITEM_DONE) >= 0:
            item = (_json(data) or {}).get("item")
            if item is not None:
                self.items.append(item)

    def stopped(self, error: OpenFusionError, numbering: _Numbering, *, told: bool = False) -> bytes:
        """The end of a stream stopped before its terminal event (the shutdown, the provider breaking it off):
        `response.failed` with the response so far; the `error` event when the stream had not told its response, or
        one without an id, which nothing could retrieve (nothing when the provider `told` its own error event)."""
        if self.response is None or not keepable(self.response):
            return b"" if told else numbering.error_event(error)
        self.failed = {**self.response, "status": "failed", "output": self.items,
                       "error": {"code": error.code or "server_error", "message": error.message}}  # fmt: skip
        event = {"type": "response.failed", "sequence_number": numbering.last + 1, "response": self.failed}
        return b"event: response.failed\ndata: " + dumps(event) + b"\n\n"


_CREATED, _ITEM_DONE = b'"response.created"', b'"response.output_item.done"'
_SEQUENCE = b'"sequence_number":'
_TYPE = b'"type"'


def _type_end(data: bytes) -> bytes:
    """The end of an event's data that names its type, read without parsing it: the start, where OpenAI writes `type`
    first, else the end, where a server that writes openai-python's own event models puts it (their fields in
    alphabetical order: `type` last, after the `response` object of a terminal event, of any size)."""
    head = data[:58]
    return head if head.find(_TYPE) >= 0 else data[-64:]


_NUMBER = re.compile(rb"\s*(\d+)")


def _record(forwarded: Forwarded, ledger: Ledger, response: dict[str, Any]) -> None:
    """The answer's model and usage, for the activity record: the input tokens read from the provider's prompt cache
    (`input_tokens_details.cached_tokens`) and those written to it (`cache_write_tokens`; `cache_creation_input_tokens`
    as Anthropic names them), both counted in `input_tokens`, told apart, as a provider bills them apart (a write
    dearer than plain input, as the chat and Messages surfaces price it). A write's lifetime is not told here: a
    request that asked only for 1-hour writes made 1-hour ones (`activity.cost`)."""
    ledger.model = response.get("model") if isinstance(response.get("model"), str) else ledger.model
    usage = response.get("usage")
    if forwarded.trace is not None and isinstance(usage, dict):
        tokens = [usage.get(k) if isinstance(usage.get(k), int) else 0 for k in ("input_tokens", "output_tokens")]
        details = usage.get("input_tokens_details")
        read = token_count(details, "cached_tokens")
        written = token_count(details, "cache_write_tokens") or token_count(details, "cache_creation_input_tokens")
        forwarded.trace.usage = Usage(
            prompt_tokens=tokens[0], completion_tokens=tokens[1], total_tokens=tokens[0] + tokens[1],
            cost=reported_cost(usage.get("cost")),
            prompt_tokens_details={"cached_tokens": read, "cache_write_tokens": written},
        )  # fmt: skip


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
