"""GET /metrics: Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from openfusion.api.deps import State

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response:
    """Requests, stage latencies, upstream errors, tokens, cost, in-flight requests, overhead."""
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
