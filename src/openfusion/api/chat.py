"""POST /v1/chat/completions: fusion for fusion models, pass-through for every other model."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from openfusion.api.body import parse_chat_request, read_body
from openfusion.api.deps import AppState
from openfusion.api.disconnect import cancel_on_disconnect
from openfusion.api.dispatch import Exchange, record_unparsed_refusal, serve
from openfusion.api.event_stream import EventStreamResponse
from openfusion.api.fusion_response import complete_fusion, stream_fusion
from openfusion.api.passthrough import SSE_HEADERS, pass_through
from openfusion.errors import OpenFusionError
from openfusion.sse import KEEPALIVE


async def chat_completions(request: Request) -> Response:
    """Create a chat completion."""
    state: AppState = request.app.state.openfusion
    raw = await read_body(request, state.settings.max_body_bytes)
    try:
        chat, data = parse_chat_request(raw)
    except OpenFusionError as exc:
        record_unparsed_refusal(request, raw, exc, api_type="completions")
        raise

    async def render(exchange: Exchange) -> Response:
        if exchange.plan is None:
            work = pass_through(state, chat, data, exchange.ledger)
            return await cancel_on_disconnect(request, work, drain=state.drain)
        return await _fusion(exchange)

    return await serve(request, chat, render, api_type="completions")


# Plain Starlette routes: the handler reads and checks its own body, so FastAPI's per-request machinery
# (dependency solving, an exit stack, response validation) would be pure cost on the hottest route.
router = APIRouter()
for _path in ("/v1/chat/completions", "/api/v1/chat/completions"):
    router.add_route(_path, chat_completions, methods=["POST"], include_in_schema=False)


async def _fusion(exchange: Exchange) -> Response:
    chat, ledger, plan = exchange.chat, exchange.ledger, exchange.plan
    assert plan is not None
    events = exchange.fusion_events(stream=chat.stream)
    if chat.stream:
        body = stream_fusion(
            events,
            generation_id=ledger.generation_id,
            model=plan.synthesizer,
            progress=not (chat.reasoning or {}).get("exclude", False),
            ledger=ledger,
        )
        return EventStreamResponse(
            body,  # (its own relay: see `stream_fusion`)
            media_type="text/event-stream",
            headers=SSE_HEADERS,
            headers_with_first_chunk=True,
            keepalive=KEEPALIVE,
            keepalive_interval=exchange.state.settings.keepalive_interval_s,
        )
    work = complete_fusion(events, generation_id=ledger.generation_id, ledger=ledger)
    result: dict[str, Any] = await cancel_on_disconnect(exchange.request, work, drain=exchange.state.drain)
    return Response(orjson.dumps(result), media_type="application/json")
