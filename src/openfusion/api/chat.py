"""POST /v1/chat/completions: fusion for fusion models, pass-through for every other model."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from openfusion.api.access import admit, client_key_name
from openfusion.api.body import parse_chat_request, read_body
from openfusion.api.deps import AppState
from openfusion.api.disconnect import cancel_on_disconnect
from openfusion.api.fusion_response import complete_fusion, stream_fusion
from openfusion.api.ledger import Ledger
from openfusion.api.passthrough import SSE_HEADERS, pass_through
from openfusion.errors import OpenFusionError
from openfusion.pipeline.budget import priced
from openfusion.pipeline.plan import FusionPlan, plan_fusion
from openfusion.pipeline.run import run_fusion
from openfusion.pipeline.tool_mode import run_tool_mode
from openfusion.protocol import ChatRequest


async def chat_completions(request: Request) -> Response:
    """Create a chat completion."""
    state: AppState = request.app.state.openfusion
    raw = await read_body(request, state.settings.max_body_bytes)
    chat, data = parse_chat_request(raw)
    plan = plan_fusion(
        chat, presets=state.presets, default_preset=state.settings.default_preset, registry=state.registry
    )
    await admit(request, chat=chat, plan=plan)  # 403 scope, 400 guards, 429 spend/concurrency
    if plan is not None:
        plan = priced(plan, chat, state.prices)  # 402 before anything is spent when over max_cost
    ledger = Ledger(
        state,
        requested_model=chat.model,
        streamed=chat.stream,
        preset=plan.preset if plan else None,
        key_name=client_key_name(request),
        route=_route(state, chat, plan),
    )
    try:
        if plan is None:
            response = await cancel_on_disconnect(request, pass_through(state, chat, data, ledger))
        else:
            response = await _fusion(request, state, chat, plan, ledger)
    except BaseException as exc:
        ledger.failed(exc)
        ledger.close()
        raise
    response.headers["X-Generation-Id"] = ledger.generation_id
    # Streams: the time before the first byte; otherwise the whole request's own time.
    response.headers["X-Openfusion-Overhead-Ms"] = f"{ledger.overhead_ms():.2f}"
    response.background = BackgroundTask(_close, ledger)  # after the last byte: off the client's path
    return response


async def _close(ledger: Ledger) -> None:
    ledger.close()


# Plain Starlette routes: the handler reads and checks its own body, so FastAPI's per-request machinery
# (dependency solving, an exit stack, response validation) would be pure cost on the hottest route.
router = APIRouter()
for _path in ("/v1/chat/completions", "/api/v1/chat/completions"):
    router.add_route(_path, chat_completions, methods=["POST"], include_in_schema=False)


def _route(state: AppState, chat: ChatRequest, plan: FusionPlan | None) -> str:
    """The metrics label of a request: a preset or a provider, never a free-form model name."""
    if plan is not None:
        return f"{plan.mode if plan.mode == 'tool' else 'fusion'}/{plan.preset}"
    try:
        return f"passthrough/{state.registry.resolve(chat.model).provider.name}"
    except OpenFusionError:
        return "passthrough/unknown"


async def _fusion(request: Request, state: AppState, chat: ChatRequest, plan: FusionPlan, ledger: Ledger) -> Response:
    runner = run_tool_mode if plan.mode == "tool" else run_fusion
    events = runner(
        upstream=state.upstream,
        plan=plan,
        request=chat,
        stream=chat.stream,
        dialects=state.dialects,
        research=state.research,
        **({"turns": state.turns} if plan.mode == "slug" else {}),
    )
    if chat.stream:
        body = stream_fusion(
            events,
            generation_id=ledger.generation_id,
            model=plan.synthesizer,
            keepalive_interval=state.settings.keepalive_interval_s,
            progress=not (chat.reasoning or {}).get("exclude", False),
            ledger=ledger,
        )
        return StreamingResponse(ledger.closing(body), media_type="text/event-stream", headers=SSE_HEADERS)
    work = complete_fusion(events, generation_id=ledger.generation_id, ledger=ledger)
    result: dict[str, Any] = await cancel_on_disconnect(request, work)
    return Response(orjson.dumps(result), media_type="application/json")
