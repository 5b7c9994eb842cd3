"""POST /v1/chat/completions: fusion for fusion models, pass-through for every other model."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from openfusion.api.access import admit
from openfusion.api.body import parse_chat_request, read_body
from openfusion.api.deps import State
from openfusion.api.disconnect import cancel_on_disconnect
from openfusion.api.fusion_response import complete_fusion, stream_fusion
from openfusion.api.passthrough import SSE_HEADERS, pass_through
from openfusion.pipeline.plan import plan_fusion
from openfusion.pipeline.run import run_fusion
from openfusion.protocol import new_generation_id

router = APIRouter()


@router.post("/v1/chat/completions")
@router.post("/api/v1/chat/completions", include_in_schema=False)
async def chat_completions(request: Request, state: State) -> Response:
    """Create a chat completion."""
    raw = await read_body(request, state.settings.max_body_bytes)
    chat, data = parse_chat_request(raw)
    plan = plan_fusion(
        chat, presets=state.presets, default_preset=state.settings.default_preset, registry=state.registry
    )
    await admit(request, chat=chat, plan=plan)  # 403 scope, 400 guards, 429 spend/concurrency
    if plan is None:
        return await cancel_on_disconnect(request, pass_through(state, chat, data))
    generation_id = new_generation_id()
    headers = {"X-Generation-Id": generation_id}
    events = run_fusion(
        upstream=state.upstream,
        plan=plan,
        request=chat,
        stream=chat.stream,
        dialects=state.dialects,
        research=state.research,
    )
    if chat.stream:
        body = stream_fusion(
            events,
            generation_id=generation_id,
            model=plan.synthesizer,
            keepalive_interval=state.settings.keepalive_interval_s,
            progress=not (chat.reasoning or {}).get("exclude", False),
        )
        return StreamingResponse(body, media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
    result = await cancel_on_disconnect(request, complete_fusion(events, generation_id=generation_id))
    return Response(orjson.dumps(result), media_type="application/json", headers=headers)
