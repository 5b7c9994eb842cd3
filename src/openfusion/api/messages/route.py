"""POST /v1/messages (and /v1/messages/count_tokens): the Anthropic Messages API for every model."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from openfusion.api.access import check_provider_choices, check_request_scope, check_tools_billed_apart
from openfusion.api.body import load_json_object, read_body
from openfusion.api.deps import AppState
from openfusion.api.disconnect import cancel_on_disconnect
from openfusion.api.dispatch import Exchange, plan_request, record_unparsed_refusal, serve
from openfusion.api.event_stream import EventStreamResponse
from openfusion.api.ledger import Ledger
from openfusion.api.messages.conversation import Untranslatable
from openfusion.api.messages.native import count_native, forward_native, speaks_messages
from openfusion.api.messages.request import MessagesRequest, Translated, parse_request, tools_billed_apart, translate
from openfusion.api.messages.tokens import estimate_input_tokens
from openfusion.api.messages.writer import PING, MessageWriter
from openfusion.api.params import renamed
from openfusion.api.passthrough import SSE_HEADERS, goes_as_sent
from openfusion.api.translated import chat_events
from openfusion.errors import OpenFusionError
from openfusion.pipeline.events import Event, RunFinished
from openfusion.pipeline.reach import reach_of
from openfusion.sse import encode_named

_PING = encode_named([PING])

log = logging.getLogger("openfusion")


async def create_message(request: Request) -> Response:
    """Create a message."""
    state: AppState = request.app.state.openfusion
    raw = await read_body(request, state.settings.max_body_bytes)
    try:
        data = load_json_object(raw)
        translated = _translated(state, parse_request(data), data)
        # A provider that speaks Messages gets the body as sent (fusion and chat providers never get the client's own
        # fields, its hosted tools among them): what it may choose is judged here.
        if goes_as_sent(state, translated.chat, speaks_messages):
            check_provider_choices(request, translated.chat, translated.raw)
            check_tools_billed_apart(request, translated.chat, tools_billed_apart(translated.raw))
    except OpenFusionError as exc:
        record_unparsed_refusal(request, raw, exc, api_type="messages")
        raise

    async def render(exchange: Exchange) -> Response:
        return await _render(exchange, translated)

    try:
        return await serve(request, translated.chat, render, api_type="messages", sent=translated.raw)
    except OpenFusionError as exc:  # found in the chat request (its plan, the guards): named as the client sent it
        raise renamed(exc, translated.names) from None


_COUNTING_MAX_TOKENS = 2**31 - 1


async def count_tokens(request: Request) -> Response:
    """Count a message's input tokens (an estimate: see `messages.tokens`)."""
    state: AppState = request.app.state.openfusion
    data = load_json_object(await read_body(request, state.settings.max_body_bytes))
    # The same request as /v1/messages, but without max_tokens: nothing is generated. Its stand-in is above any
    # thinking budget, which /v1/messages requires to be below max_tokens.
    translated = _translated(state, parse_request({"max_tokens": _COUNTING_MAX_TOKENS, **data}), data)
    chat = translated.chat
    try:
        plan = plan_request(request, chat)  # a preset outside the key's scope: 403 before it is read
        # Counting spends nothing, but a provider that speaks Messages is asked with the operator's key: a model
        # outside the key's scope is refused here as on /v1/messages.
        check_request_scope(request, reach_of(chat, plan))
    except OpenFusionError as exc:
        raise renamed(exc, translated.names) from None
    if plan is None and speaks_messages(state, chat):  # 404 for a model nothing serves, as on /v1/messages
        return await count_native(state, chat, translated.raw, request)
    return Response(orjson.dumps({"input_tokens": estimate_input_tokens(translated.request)}),
                    media_type="application/json")  # fmt: skip


def _translated(state: AppState, request: MessagesRequest, raw: dict[str, Any]) -> Translated:
    """The request in chat form. A block no chat message can carry (a file id, a container upload, a tool
    reference) is refused, unless the request goes as sent to a provider that speaks Messages: its chat form then
    only sizes and checks it, with a placeholder for the block."""
    try:
        return translate(request, raw)
    except Untranslatable as refused:
        translated = translate(request, raw, lenient=True)
        if not goes_as_sent(state, translated.chat, speaks_messages):
            raise refused from None
        return translated


router = APIRouter()
for _prefix in ("/v1", "/api/v1"):
    router.add_route(f"{_prefix}/messages", create_message, methods=["POST"], include_in_schema=False)
    router.add_route(f"{_prefix}/messages/count_tokens", count_tokens, methods=["POST"], include_in_schema=False)


async def _render(exchange: Exchange, translated: Translated) -> Response:
    chat, ledger, state = exchange.chat, exchange.ledger, exchange.state
    if exchange.plan is not None:
        model, events = exchange.plan.synthesizer, exchange.fusion_events(stream=chat.stream)
    elif speaks_messages(state, chat):
        native = forward_native(exchange, translated.raw)
        return await cancel_on_disconnect(exchange.request, native, drain=state.drain)
    else:
        opening = chat_events(state, chat, translated.body)
        model, events = await cancel_on_disconnect(exchange.request, opening, drain=state.drain)
    hit = exchange.cache is not None and exchange.cache.entry is not None  # reads nothing: no tokens to estimate
    # The model that writes the answer, as `message_start` (a stream's only word on it) must name it at once.
    writer = MessageWriter(request=translated.request, model=model,
                           input_tokens=0 if hit else estimate_input_tokens(translated.request))  # fmt: skip
    if chat.stream:
        body = ledger.closing(
            _stream(writer, events, ledger=ledger),
            render_error=lambda error: encode_named(writer.fail(error)),  # the end of the grace period
        )
        return EventStreamResponse(
            body,
            media_type="text/event-stream",
            headers=SSE_HEADERS,
            headers_with_first_chunk=True,
            keepalive=_PING,  # whenever the run is silent
            keepalive_interval=state.settings.keepalive_interval_s,
        )
    result = await cancel_on_disconnect(exchange.request, _complete(writer, events, ledger=ledger), drain=state.drain)
    return Response(orjson.dumps(result), media_type="application/json")


async def _stream(writer: MessageWriter, events: AsyncIterator[Event], *, ledger: Ledger) -> AsyncIterator[bytes]:
    """The SSE body: `message_start` at once, then the run's events as they come (the run driven here)."""
    yield encode_named(writer.start())  # with the headers and the run's first events: one write
    try:
        async with contextlib.aclosing(events):  # the client gone: the run's upstream calls close at once
            async for event in events:
                out = encode_named(_render_event(writer, event, ledger))
                if writer.finished:
                    await ledger.commit()  # clients stop reading at `message_stop`: the record goes to the store first
                if out:
                    yield out
        if not writer.finished:
            raise OpenFusionError("The run ended without an answer.", code="internal_error")
    except OpenFusionError as exc:
        ledger.failed(exc)
        await ledger.commit()  # the `error` event ends the stream: its record first
        yield encode_named(writer.fail(exc))
    except Exception as exc:
        ledger.failed(exc)
        log.exception("messages stream failed")
        await ledger.commit()
        yield encode_named(writer.fail(OpenFusionError("Internal server error.", code="internal_error")))


async def _complete(writer: MessageWriter, events: AsyncIterator[Event], *, ledger: Ledger) -> dict[str, Any]:
    """The non-streamed body: the message the same events build."""
    async for event in events:
        _render_event(writer, event, ledger)
    if not writer.finished:
        raise OpenFusionError("The run ended without an answer.", code="internal_error")
    return writer.snapshot()


def _render_event(writer: MessageWriter, event: Event, ledger: Ledger) -> list[dict[str, Any]]:
    out = writer.render(event)
    if isinstance(event, RunFinished):
        ledger.finished(event, finish_reason=writer.finish_reason)
    return out
