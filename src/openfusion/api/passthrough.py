"""Pass-through: a non-fusion model goes to its provider; the `models` list is tried in order on error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response, StreamingResponse

from openfusion.api.deps import AppState
from openfusion.errors import UpstreamError
from openfusion.pipeline.plan import fusion_plugin_index
from openfusion.protocol import ChatRequest
from openfusion.sse import DONE, encode, error_chunk
from openfusion.upstream.client import Forwarded

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def forward_first_success(state: AppState, chat: ChatRequest, body: dict[str, Any]) -> Forwarded:
    """Forward to `model`, then each of `models` while the previous one answered with an error."""
    candidates = chat.candidate_models()
    for position, model in enumerate(candidates):
        last = position == len(candidates) - 1
        try:
            forwarded = await state.upstream.forward(model, body, stream=chat.stream)
        except UpstreamError:
            if last:
                raise
            continue
        if forwarded.status_code < 400 or last:
            return forwarded
        await forwarded.aclose()
    raise AssertionError("unreachable: the candidate list is never empty")


async def pass_through(state: AppState, chat: ChatRequest, data: dict[str, Any]) -> Response:
    """Send the request to the model's provider and relay its answer as it comes."""
    body = _without_openfusion_fields(chat, data)
    forwarded = await forward_first_success(state, chat, body)
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
        yield b"\n\n" + encode(error_chunk(exc, generation_id="", model=model, created=0)) + DONE
    finally:
        await forwarded.aclose()


def _without_openfusion_fields(chat: ChatRequest, data: dict[str, Any]) -> dict[str, Any]:
    """The fusion plugin and the `models` fallback list are openfusion's own business: providers never see them."""
    body = {key: value for key, value in data.items() if key not in ("plugins", "models")}
    index = fusion_plugin_index(chat)
    plugins = [p for i, p in enumerate(data.get("plugins") or []) if i != index]
    if plugins:
        body["plugins"] = plugins
    return body
