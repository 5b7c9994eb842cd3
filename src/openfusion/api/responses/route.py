"""POST /v1/responses: the Responses API for fusion models and pass-through models alike."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from openfusion.api.access import check_provider_choices, check_tools_billed_apart, client_key_name
from openfusion.api.body import load_json_object, read_body
from openfusion.api.deps import AppState
from openfusion.api.disconnect import cancel_on_disconnect
from openfusion.api.dispatch import Exchange, record_unparsed_refusal, serve
from openfusion.api.event_stream import EventStreamResponse
from openfusion.api.ledger import Ledger
from openfusion.api.params import renamed
from openfusion.api.passthrough import SSE_HEADERS, goes_as_sent
from openfusion.api.responses.keeper import KEEP_TIMEOUT_S, not_stored
from openfusion.api.responses.native import forward_native, provider_speaks_responses, speaks_responses
from openfusion.api.responses.request import parse_request, tools_billed_apart
from openfusion.api.responses.translation import Translated, translate
from openfusion.api.responses.writer import ResponseWriter
from openfusion.api.shutdown import BACKSTOP_S
from openfusion.api.translated import chat_events
from openfusion.errors import InvalidRequest, OpenFusionError
from openfusion.pipeline.events import Event, RunFinished
from openfusion.protocol import NAME_ERROR, plain_name
from openfusion.sse import KEEPALIVE, encode_named

log = logging.getLogger("openfusion")


async def create_response(request: Request) -> Response:
    """Create a model response."""
    state: AppState = request.app.state.openfusion
    raw = await read_body(request, state.settings.max_body_bytes)
    owner = client_key_name(request) or ""  # stored responses belong to the key that made them
    try:
        data = load_json_object(raw)
        parsed = parse_request(data)
        history = None
        if parsed.previous_response_id is not None:
            if state.responses is None:
                raise not_stored(parsed.previous_response_id)
            history = await state.responses.history(parsed.previous_response_id, owner=owner)
        translated = translate(parsed, history, raw=data)
        # A provider that speaks the Responses API gets the body as sent (fusion and chat providers never get the
        # client's own fields, its hosted tools among them): what it may choose is judged here.
        if goes_as_sent(state, translated.chat, provider_speaks_responses):
            check_provider_choices(request, translated.chat, translated.raw)
            check_tools_billed_apart(request, translated.chat, tools_billed_apart(translated.raw))
    except OpenFusionError as exc:
        record_unparsed_refusal(request, raw, exc, api_type="responses")
        raise

    async def render(exchange: Exchange) -> Response:
        return await _render(exchange, translated, owner=owner)

    # What a provider that speaks the Responses API gets (a stored conversation spelt out): the cache writes it asks
    # for are priced (its chat form has no `cache_control`).
    sent = translated.raw if history is None else {**translated.raw, "input": translated.items}
    try:
        return await serve(request, translated.chat, render, api_type="responses", sent=sent)
    except OpenFusionError as exc:  # found in the chat request (its plan, the guards): named as the client sent it
        raise renamed(exc, translated.names) from None


async def retrieve_response(request: Request) -> Response:
    """A stored response, to the key that created it."""
    state: AppState = request.app.state.openfusion
    response_id = request.path_params["response_id"]
    try:
        plain_name(response_id)
    except ValueError:
        raise InvalidRequest(f"Invalid value for 'response_id': {NAME_ERROR}.", param="response_id") from None
    if state.responses is None:
        raise not_stored(response_id, param=None)
    stored = await state.responses.load(response_id, owner=client_key_name(request) or "", param=None)
    return Response(orjson.dumps(stored.response), media_type="application/json")


router = APIRouter()
for _prefix in ("/v1", "/api/v1"):
    router.add_route(f"{_prefix}/responses", create_response, methods=["POST"], include_in_schema=False)
    router.add_route(
        f"{_prefix}/responses/{{response_id}}", retrieve_response, methods=["GET"], include_in_schema=False
    )


async def _render(exchange: Exchange, translated: Translated, *, owner: str) -> Response:
    chat, ledger, keeper = exchange.chat, exchange.ledger, exchange.state.responses
    store = keeper is not None and translated.request.store is not False
    items = translated.items if store else None  # all `keep` needs of the request: none when nothing is stored
    kept = False

    async def keep(response: dict[str, Any], timeout_s: float = KEEP_TIMEOUT_S) -> None:
        """Keep the response (when responses are kept), before the client hears it is done: a follow-up may come."""
        nonlocal kept
        if keeper is not None and items is not None and not kept:
            kept = True
            # The input side only: the output is in the response object, and history() appends it.
            await keeper.keep(response, items=items, owner=owner, generation_id=ledger.generation_id,
                              timeout_s=timeout_s)  # fmt: skip

    if exchange.plan is not None:
        model = exchange.plan.synthesizer
        events = exchange.fusion_events(stream=chat.stream, panel_deltas=chat.stream)
    elif speaks_responses(exchange):
        return await cancel_on_disconnect(
            exchange.request, forward_native(exchange, translated, keep=keep, store=store), drain=exchange.state.drain
        )
    else:
        opening = chat_events(exchange.state, chat, translated.body)
        model, events = await cancel_on_disconnect(exchange.request, opening, drain=exchange.state.drain)
    # The model that writes the answer, from the first event on (a fallback synthesizer's, once it answers).
    writer = ResponseWriter(request=translated.request, model=model, store=store)
    if chat.stream:
        body = ledger.closing(
            _stream(writer, events, ledger=ledger, keep=keep),
            render_error=lambda error: encode_named(writer.fail(error)),  # the end of the grace period
            # ...whose failed response is kept as any other (GET tells how it ended), within half the time left before
            # the server's backstop cancels the request: its client still gets `response.failed` if the store is slow.
            keep_stopped=lambda: keep(writer.snapshot(), timeout_s=BACKSTOP_S / 2),
        )
        return EventStreamResponse(
            body,
            media_type="text/event-stream",
            headers=SSE_HEADERS,
            headers_with_first_chunk=True,
            keepalive=KEEPALIVE,  # whenever the run is silent
            keepalive_interval=exchange.state.settings.keepalive_interval_s,
        )
    work = _complete(writer, events, ledger=ledger, keep=keep)
    result = await cancel_on_disconnect(exchange.request, work, drain=exchange.state.drain)
    return Response(orjson.dumps(result), media_type="application/json")


async def _stream(
    writer: ResponseWriter,
    events: AsyncIterator[Event],
    *,
    ledger: Ledger,
    keep: Callable[[dict[str, Any]], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """The SSE body: `response.created` at once, then the run's events as they come (the run driven here)."""
    yield encode_named(writer.start())  # with the headers and the run's first events: one write
    try:
        async with contextlib.aclosing(events):  # the client gone: the run's upstream calls close at once
            async for event in events:
                out = encode_named(_render_event(writer, event, ledger))
                if writer.finished:
                    await keep(writer.snapshot())
                    await ledger.commit()  # clients stop reading at `response.completed`: the record goes first
                if out:
                    yield out
    except Exception as exc:
        ledger.failed(exc)
        error = exc if isinstance(exc, OpenFusionError) else _internal_error()
        if error is not exc:
            log.exception("responses stream failed")
        failed = encode_named(writer.fail(error))
        await keep(writer.snapshot())  # a failed response is kept too, as OpenAI keeps it (GET tells how it ended)
        await ledger.commit()  # likewise before `response.failed`
        yield failed


async def _complete(
    writer: ResponseWriter,
    events: AsyncIterator[Event],
    *,
    ledger: Ledger,
    keep: Callable[[dict[str, Any]], Awaitable[None]],
) -> dict[str, Any]:
    """The non-streamed body: the response object the same events build."""
    async for event in events:
        _render_event(writer, event, ledger)
    if not writer.finished:
        raise OpenFusionError("The run ended without an answer.", code="internal_error")
    await keep(writer.snapshot())
    return writer.snapshot()


def _internal_error() -> OpenFusionError:
    return OpenFusionError("Internal server error.", code="server_error")


def _render_event(writer: ResponseWriter, event: Event, ledger: Ledger) -> list[dict[str, Any]]:
    out = writer.render(event)
    if isinstance(event, RunFinished):
        ledger.finished(event, finish_reason=writer.finish_reason)
    return out
