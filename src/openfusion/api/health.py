"""GET /healthz: liveness. GET /readyz: readiness (providers configured, stores reachable). No key needed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from openfusion import __version__

router = APIRouter()
log = logging.getLogger("openfusion")

_PROBE_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok", "version": __version__}


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Ready to serve: 200 when every check is "ok", else 503 naming what failed (and nothing secret)."""
    state = request.app.state
    checks: dict[str, str] = {"providers": _providers_check(getattr(state, "openfusion", None))}
    store = getattr(state, "activity_store", None)
    if store is not None:
        checks["activity_store"] = await _probe("activity_store", store.ping)
    access = getattr(state, "access", None)
    if access is not None and access.limiter.shared:
        checks["limits_store"] = await _probe("limits_store", access.limiter.ping)
    ready = all(result == "ok" for result in checks.values())
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json")


def _providers_check(app_state: Any) -> str:
    # Readiness wants a provider the operator set up or gave a key to, whose key (if it names one) is set.
    return (app_state.registry.unusable() or "ok") if app_state is not None else "no provider configured"


async def _probe(name: str, ping: Callable[[], Awaitable[Any]]) -> str:
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            await ping()
    except TimeoutError:
        log.warning("readiness: %s did not answer within %s s", name, _PROBE_TIMEOUT_S)
        return "timeout"
    except Exception as exc:  # any failure means not ready; the reason goes to the log, not the response
        log.warning("readiness: %s unreachable (%s)", name, type(exc).__name__)
        return "unreachable"
    return "ok"
