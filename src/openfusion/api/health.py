"""GET /healthz: liveness."""

from __future__ import annotations

from fastapi import APIRouter

from openfusion import __version__

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok", "version": __version__}
