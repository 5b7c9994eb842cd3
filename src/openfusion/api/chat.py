"""POST /v1/chat/completions: fusion for fusion models, pass-through for every other model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from openfusion.api.body import parse_chat_request, read_body
from openfusion.api.deps import AppState, State
from openfusion.api.fusion_response import complete_fusion, stream_fusion
from openfusion.errors import OpenFusionError, UpstreamError
from openfusion.pipeline.plan import fusion_plugin_index, plan_fusion
from openfusion.pipeline.run import run_fusion
from openfusion.protocol import ChatRequest, new_generation_id
from openfusion.sse import DONE, encode, error_chunk
from openfusion.upstream.client import Forwarded

router = APIRouter()

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/v1/chat/completions")
@router.post("/api/v1/chat/completions", include_in_schema=False)
async def chat_completions(request: Request, state: State) -> Response:
    """Create a chat completion."""
    raw = await read_body(request, state.settings.max_body_bytes)
    chat, data = parse_chat_request(raw)
    plan = plan_fusion(
        chat, presets=state.presets, default_preset=state.settings.default_preset, registry=state.registry
    )
    if plan is None:
        return await pass_through(state, chat, data)
    generation_id = new_generation_id()
    headers = {"X-Generation-Id": generation_id}
    events = run_fusion(upstream=state.upstream, plan=plan, request=chat, stream=chat.stream)
    if chat.stream:
        body = stream_fusion(
            events,
            generation_id=generation_id,
            model=plan.synthesizer,
            keepalive_interval=state.settings.keepalive_interval_s,
            progress=not (chat.reasoning or {}).get("exclude", False),
        )
        return StreamingResponse(body, media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
    result = await complete_fusion(events, generation_id=generation_id)
    return Response(orjson.dumps(result), media_type="application/json", headers=headers)


async def pass_through(state: AppState, chat: ChatRequest, data: dict[str, Any]) -> Response:
    """Send the request to the model's provider and relay its answer as it comes."""
    body = _without_fusion_plugin(chat, data)
    forwarded = await state.upstream.forward(chat.model, body, stream=chat.stream)
    if chat.stream and forwarded.status_code < 400:
        return StreamingResponse(
            _relay(forwarded, model=chat.model),
            status_code=forwarded.status_code,
            headers={**forwarded.headers, **SSE_HEADERS},
        )
    try:
        content = b"".join([chunk async for chunk in forwarded.body])
    finally:
        await forwarded.aclose()
    return Response(content, status_code=forwarded.status_code, headers=forwarded.headers)


async def _relay(forwarded: Forwarded, *, model: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in forwarded.body:
            yield chunk
    except UpstreamError as exc:  # the upstream broke off mid-stream: say so rather than end silently
        created = 0
        yield b"\n\n" + encode(error_chunk(exc, generation_id="", model=model, created=created)) + DONE
    finally:
        await forwarded.aclose()


def _without_fusion_plugin(chat: ChatRequest, data: dict[str, Any]) -> dict[str, Any]:
    """The fusion plugin is openfusion's own business: providers never see it."""
    index = fusion_plugin_index(chat)
    if index is None:
        return data
    plugins = [p for i, p in enumerate(data.get("plugins") or []) if i != index]
    body = {key: value for key, value in data.items() if key != "plugins"}
    if plugins:
        body["plugins"] = plugins
    return body


__all__ = ["OpenFusionError", "router"]
