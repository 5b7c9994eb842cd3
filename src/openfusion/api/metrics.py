"""GET /metrics: Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from openfusion.api.access import check_metrics_reader
from openfusion.api.deps import State

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, state: State) -> Response:
    """Requests, stage latencies, upstream errors, tokens, cost, in-flight requests, overhead: the whole server's,
    so only an admin or metrics key reads them when keys are configured."""
    check_metrics_reader(request)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
