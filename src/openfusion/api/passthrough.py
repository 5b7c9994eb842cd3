"""Pass-through: a non-fusion model goes to its provider (OpenRouter's own fields to OpenRouter alone, its `reasoning`
object in the provider's style); the `models` list is tried in order on error."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson
from starlette.responses import Response

from openfusion.api.completion_events import as_event_stream
from openfusion.api.deps import AppState
from openfusion.api.event_stream import EventStreamResponse
from openfusion.api.ledger import Ledger
from openfusion.errors import OpenFusionError, UpstreamError, UpstreamProtocolError, UpstreamStatusError, relayed
from openfusion.pipeline.plan import fusion_plugin_index, read_fusion
from openfusion.protocol import ChatRequest, parse_usage
from openfusion.sse import DONE, encode, error_chunk
from openfusion.sse_events import WholeEvents
from openfusion.upstream.client import CHAT_PATH, RESPONSES_PATH, Forwarded
from openfusion.upstream.reasoning import send_reasoning_as, send_responses_reasoning_as
from openfusion.upstream.trace import end_call

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}

# OpenRouter's own request fields, on each API it serves: its routing (`provider`, `route`), `preset`, prompt
# `transforms`, `usage` accounting, `plugins`, the `models` fallbacks, `session_id`, `trace` and `debug`. Neither
# OpenAI's Chat Completions and Responses APIs nor Anthropic's Messages API has a field of these names
# (tests/unit/test_openrouter_fields.py reads their SDKs' request types); they, and OpenAI-compatible servers such as
# Groq's or Mistral's, refuse a field they do not know with a 400, and one they take some day under such a name may
# mean something else. A pass-through sends them only to OpenRouter.
OPENROUTER_FIELDS = frozenset(
    {"provider", "route", "preset", "transforms", "usage", "plugins", "models", "session_id", "trace", "debug"}
)


async def forward_first_success(
    state: AppState,
    chat: ChatRequest,
    body: dict[str, Any],
    *,
    path: str = CHAT_PATH,
    headers: Mapping[str, str] | None = None,
    openrouter_fields: frozenset[str],
) -> Forwarded:
    """Forward to `model`, then each of `models` while the previous one answered with an error.

    `openrouter_fields` are the body's fields that go to OpenRouter alone (`takes_openrouter_fields`): each other
    provider gets the body without them, and its `reasoning` in the provider's own style. The last one's error is
    relayed as the provider sent it when it is JSON; one that is not (a proxy's HTML page) is raised, for the client
    to get an error in its own API's shape.
    """
    candidates = chat.candidate_models()
    for position, model in enumerate(candidates):
        last = position == len(candidates) - 1
        sent = body_for_provider(state, model, body, openrouter_fields, path=path)
        try:
            forwarded = await state.upstream.forward(model, sent, stream=chat.stream, path=path, headers=headers)
        except UpstreamError as exc:  # unreachable, or an error no client could read (a proxy's HTML page)
            if last:
                raise relayed(exc) from None
            continue
        if forwarded.status_code < 400 or last:
            return forwarded
        await forwarded.aclose()
    raise AssertionError("unreachable: the candidate list is never empty")


# How each API's `reasoning` goes to a provider other than OpenRouter (Messages: not at all, its own is `thinking`).
_REASONING_SENT = {CHAT_PATH: send_reasoning_as, RESPONSES_PATH: send_responses_reasoning_as}


def body_for_provider(
    state: AppState, model: str, body: dict[str, Any], openrouter_fields: frozenset[str], *, path: str = CHAT_PATH
) -> dict[str, Any]:
    """The body as the provider of `model` takes it: without `openrouter_fields`, unless it is OpenRouter, and with
    OpenRouter's `reasoning` object as its `reasoning_style` says (`upstream.reasoning`)."""
    translate = _REASONING_SENT.get(path) if "reasoning" in body else None
    if translate is None and openrouter_fields.isdisjoint(body):
        return body  # the usual request: nothing to look up
    try:
        provider = state.registry.resolve(model).provider
    except OpenFusionError:
        return body  # served by none: its forward says so
    if provider.takes_openrouter_fields:
        return body
    sent = {key: value for key, value in body.items() if key not in openrouter_fields}
    return translate(sent, provider.config.reasoning_style) if translate is not None else sent


async def pass_through(state: AppState, chat: ChatRequest, data: dict[str, Any], ledger: Ledger) -> Response:
    """Send the request to the model's provider (OpenRouter's own fields to OpenRouter alone) and relay its answer as
    it comes."""
    body = without_openfusion_fields(chat, data)
    forwarded = await forward_first_success(state, chat, body, openrouter_fields=OPENROUTER_FIELDS)
    if forwarded.status_code >= 400:
        ledger.status, ledger.failure_reason = "error", f"upstream_{forwarded.status_code}"
    if chat.stream and forwarded.status_code < 400:
        if "event-stream" not in forwarded.headers.get("content-type", "").lower():  # it ignored `stream: true`
            forwarded = as_event_stream(forwarded)
        ledger.expect_relay(forwarded)
        relay = _relay(forwarded, model=chat.model, ledger=ledger)  # (its own ledger's relay: see `_relay`)
        sse_headers = {**forwarded.headers, **SSE_HEADERS}
        return EventStreamResponse(relay, status_code=forwarded.status_code, headers=sse_headers)
    try:
        content = b"".join([chunk async for chunk in forwarded.body])  # its usage read as it came (forward)
    finally:
        await forwarded.aclose()
    return Response(content, status_code=forwarded.status_code, headers=forwarded.headers)


_DONE_FIELD = b"data: [DONE]"


async def _relay(forwarded: Forwarded, *, model: str, ledger: Ledger) -> AsyncIterator[bytes]:
    """The relayed stream, whole events only (`WholeEvents`: what the client has always ends where an event does, so
    the error that ends a stream cut short follows it as it is), with its ledger's relay (`Ledger.closing`) done here
    rather than by a generator around this one: a level each read would cross too, ~1.2 k instructions."""
    with ledger.relay() as relay:
        try:
            complete = False
            # The last few reads, by reference (no copy on the hot path): the end of the stream tells if it is whole.
            recent: deque[bytes] = deque(maxlen=4)
            confirms = ledger.confirms
            events = WholeEvents()
            waiting = events.waiting  # (a local: one look up fewer a read)
            try:
                async for chunk in forwarded.body:
                    recent.append(chunk)
                    if confirms and _DONE_FIELD in chunk and unfinished(forwarded, _tail(recent)) is None:
                        # Clients stop reading at [DONE]: the answer is whole, so its record goes to the store first.
                        _note_usage(forwarded, _tail(recent))
                        forwarded.answered()
                        await ledger.commit()
                    # The usual read ends an event, and goes as it is: one look at its last two bytes.
                    if waiting or chunk[-2:] != b"\n\n":
                        chunk = events.cut(chunk)
                        if not chunk:
                            continue
                    yield chunk
                complete = True
                _note_usage(forwarded, _tail(recent))
                ending = unfinished(forwarded, _tail(recent))
                if ending is None:
                    if rest := events.rest():  # an event the provider left unfinished at its end: as it came
                        yield rest
                else:  # ended cleanly, yet not a whole answer: say so, as for a cut stream
                    error, done_sent = ending
                    tail = _failed(forwarded, error, model=model, ledger=ledger)
                    if not done_sent:  # after a [DONE] the client reads nothing more: the record alone says it
                        yield tail
            except UpstreamError as exc:  # the upstream broke off mid-stream: say so rather than end silently
                complete = True
                yield _failed(forwarded, exc, model=model, ledger=ledger)
            finally:
                await forwarded.aclose(complete=complete)
            await ledger.commit()  # before the body's end, which tells the client the response is whole
        except BaseException as exc:
            if (end := relay.stopped(exc)) is None:
                raise
            if end:
                yield end  # (the ledger closed as the relay ends)


def _failed(forwarded: Forwarded, exc: UpstreamError, *, model: str, ledger: Ledger) -> bytes:
    """Record a relayed stream's failure; the error chunk and [DONE] that end it for the client."""
    ledger.failed(exc)
    if forwarded.trace is not None and forwarded.trace.ended is None:
        end_call(forwarded.trace, status="error", error=exc.message, upstream_status=exc.upstream_status)
    return encode(error_chunk(exc, generation_id=ledger.generation_id, model=model, created=0)) + DONE


def provider_failed(forwarded: Forwarded, ledger: Ledger, error: Any) -> None:
    """A relayed stream the provider ended with its own failure event (`error`, its error object): the
    client gets that event as sent; the request and its upstream call are recorded as failed."""
    trace = forwarded.trace
    slug, provider = (trace.model, trace.provider) if trace is not None else (ledger.requested_model, "")
    message = error.get("message") if isinstance(error, dict) else None
    reason = message if isinstance(message, str) and message else "unknown error"
    relay_failed(forwarded, ledger, UpstreamStatusError(f"{slug} failed mid-stream: {reason}", model=slug,
                                                        provider=provider))  # fmt: skip


def relay_failed(forwarded: Forwarded, ledger: Ledger, exc: UpstreamError) -> None:
    """A relayed stream that failed after it began (cut off, closed early, an error event): the request and its
    upstream call are recorded as failed. The usage the provider reported before it failed counts (a failed
    response's, which it bills); what it generated without reporting it is unknown."""
    ledger.failed(exc)
    trace = forwarded.trace
    if trace is not None and trace.ended is None:
        end_call(trace, status="error", usage=trace.usage, error=exc.message)


def unfinished(forwarded: Forwarded, tail: bytes) -> tuple[UpstreamError, bool] | None:
    """Why an event stream that ended cleanly is not a whole answer, and whether it sent [DONE]; None if whole.

    Whole: it sent [DONE] or a finish_reason, and no error event. Only its last events are read, once.
    """
    if "text/event-stream" not in forwarded.headers.get("content-type", ""):
        return None  # not a stream at all (an upstream that ignored stream: true): relayed as it is
    events = _last_data(tail)
    if events and events[0] == b"[DONE]" and not any(b'"error"' in data for data in events):
        return None  # the usual end, told without parsing anything
    trace = forwarded.trace
    slug, provider = (trace.model, trace.provider) if trace is not None else ("upstream", "")
    done = finished = False
    error: dict[str, Any] | None = None
    for data in events:
        if data == b"[DONE]":
            done = True
            continue
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue  # the first event may be cut by the window
        if not isinstance(chunk, dict):
            continue
        if error is None and isinstance(chunk.get("error"), dict):
            error = chunk["error"]
        choices = chunk.get("choices")
        finished = finished or any(isinstance(c, dict) and c.get("finish_reason") for c in choices or [])
    if error is not None:
        code = error.get("code")
        message = f"{slug} failed mid-stream: {error.get('message') or 'unknown error'}"
        status = code if isinstance(code, int) and not isinstance(code, bool) else None  # `true` is no status
        return UpstreamStatusError(message, model=slug, provider=provider, upstream_status=status), done
    if done or finished:
        return None
    message = f"{slug} ({provider}): the stream ended before the completion finished"
    return UpstreamProtocolError(message, model=slug, provider=provider), False


def _tail(reads: deque[bytes], size: int = 8192) -> bytes:
    """The last `size` bytes of the stream (a large read is sliced, never split into lines whole)."""
    parts: list[bytes] = []
    length = 0
    for read in reversed(reads):
        parts.append(read)
        length += len(read)
        if length >= size:
            break
    return b"".join(reversed(parts))[-size:]


def _last_data(tail: bytes, count: int = 4) -> list[bytes]:
    """The `data` of the last `count` events in `tail`, newest first (one-line data, as chat streams send)."""
    found: list[bytes] = []
    end = len(tail)
    while len(found) < count and (start := tail.rfind(b"data:", 0, end)) >= 0:
        if start == 0 or tail[start - 1] in b"\r\n":  # a field, not the text "data:" inside an event
            line_end = tail.find(b"\n", start, end)
            found.append(tail[start + 5 : line_end if line_end >= 0 else end].strip())
        end = start
    return found


def _note_usage(forwarded: Forwarded, tail: bytes) -> None:
    """The usage a stream's last events report (the chunk `stream_options.include_usage` asks for, or one a provider
    always sends), as the call's: its tokens and cost for the record and the spend cap. Read once, at the end."""
    trace = forwarded.trace
    if trace is None or trace.ended is not None or trace.usage is not None or tail.find(b'"usage"') < 0:
        return
    for data in _last_data(tail):
        if data.find(b'"usage"') < 0:
            continue
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        usage = chunk.get("usage") if isinstance(chunk, dict) else None
        if isinstance(usage, dict):
            trace.usage = parse_usage(usage)
            return


def goes_as_sent(state: AppState, chat: ChatRequest, speaks: Callable[[AppState, ChatRequest], bool]) -> bool:
    """Whether a request goes as sent to providers that speak its surface's API themselves (`speaks`): a pass-through
    (no fusion asked for, read from the request, no preset looked at) whose providers all speak it. False for one
    refused on its own account further on (a model no provider serves)."""
    try:
        return read_fusion(chat, default_preset=state.settings.default_preset) is None and speaks(state, chat)
    except OpenFusionError:
        return False


def without_openfusion_fields(chat: ChatRequest, data: dict[str, Any]) -> dict[str, Any]:
    """The fusion plugin and the `models` fallback list are openfusion's own business: providers never see them."""
    body = {key: value for key, value in data.items() if key not in ("plugins", "models")}
    index = fusion_plugin_index(chat)
    plugins = [p for i, p in enumerate(data.get("plugins") or []) if i != index]
    if plugins:
        body["plugins"] = plugins
    return body
