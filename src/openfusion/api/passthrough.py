"""Pass-through: a non-fusion model goes to its provider; the `models` list is tried in order on error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.responses import Response, StreamingResponse

from openfusion.api.deps import AppState
from openfusion.api.ledger import Ledger
from openfusion.errors import UpstreamError
from openfusion.pipeline.plan import fusion_plugin_index
from openfusion.protocol import ChatRequest, Usage, parse_usage
from openfusion.sse import DONE, encode, error_chunk
from openfusion.upstream.client import Forwarded
from openfusion.upstream.trace import end_call

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


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


async def pass_through(state: AppState, chat: ChatRequest, data: dict[str, Any], ledger: Ledger) -> Response:
    """Send the request to the model's provider and relay its answer as it comes."""
    body = without_openfusion_fields(chat, data)
    forwarded = await forward_first_success(state, chat, body)
    if forwarded.status_code >= 400:
        ledger.status, ledger.failure_reason = "error", f"upstream_{forwarded.status_code}"
    if chat.stream and forwarded.status_code < 400:
        relay = ledger.closing(_relay(forwarded, model=chat.model, ledger=ledger))
        return StreamingResponse(relay, status_code=forwarded.status_code, headers={**forwarded.headers, **SSE_HEADERS})
    try:
        content = b"".join([chunk async for chunk in forwarded.body])
        if forwarded.trace is not None and forwarded.status_code < 400:
            forwarded.trace.usage = _usage_of(content)
    finally:
        await forwarded.aclose()
    return Response(content, status_code=forwarded.status_code, headers=forwarded.headers)


async def _relay(forwarded: Forwarded, *, model: str, ledger: Ledger) -> AsyncIterator[bytes]:
    complete = False
    try:
        async for chunk in forwarded.body:
            yield chunk
        complete = True
    except UpstreamError as exc:  # the upstream broke off mid-stream: say so rather than end silently
        complete = True
        ledger.failed(exc)
        if forwarded.trace is not None and forwarded.trace.ended is None:
            end_call(forwarded.trace, status="error", error=exc.message, upstream_status=exc.upstream_status)
        yield b"\n\n" + encode(error_chunk(exc, generation_id=ledger.generation_id, model=model, created=0)) + DONE
    finally:
        await forwarded.aclose(complete=complete)


def _usage_of(content: bytes) -> Usage | None:
    """The `usage` of a relayed JSON completion, for the activity record (None when it has none)."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    usage = data.get("usage") if isinstance(data, dict) else None
    return parse_usage(usage) if isinstance(usage, dict) else None


def without_openfusion_fields(chat: ChatRequest, data: dict[str, Any]) -> dict[str, Any]:
    """The fusion plugin and the `models` fallback list are openfusion's own business: providers never see them."""
    body = {key: value for key, value in data.items() if key not in ("plugins", "models")}
    index = fusion_plugin_index(chat)
    plugins = [p for i, p in enumerate(data.get("plugins") or []) if i != index]
    if plugins:
        body["plugins"] = plugins
    return body
