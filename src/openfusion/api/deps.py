"""What routes depend on: the per-app state built by the app factory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from openfusion.activity import ActivityWriter, PriceTable
from openfusion.api.responses.keeper import ResponseKeeper
from openfusion.api.shutdown import Drain
from openfusion.cache.service import ResultCache
from openfusion.observability.metrics import Metrics
from openfusion.pipeline.structured import DialectMemory
from openfusion.pipeline.turns import TurnCache
from openfusion.presets import Preset
from openfusion.settings import Settings
from openfusion.upstream.client import UpstreamClient
from openfusion.upstream.providers import ProviderRegistry
from openfusion.upstream.web import WebResearch


@dataclass
class AppState:
    """Everything a request needs, owned by the app's lifespan."""

    settings: Settings
    registry: ProviderRegistry
    presets: dict[str, Preset]
    upstream: UpstreamClient
    research: WebResearch | None = None
    dialects: DialectMemory = field(default_factory=DialectMemory)
    metrics: Metrics = field(default_factory=Metrics)
    activity: ActivityWriter | None = None
    prices: PriceTable = field(default_factory=PriceTable)
    turns: TurnCache = field(default_factory=TurnCache)
    drain: Drain = field(default_factory=Drain)
    responses: ResponseKeeper | None = None  # Responses API responses kept for follow-ups (None: not kept)
    cache: ResultCache | None = None  # the result cache (None: nothing is cached)


async def get_state(request: Request) -> AppState:
    """The app's state (async: FastAPI would run a plain function in its thread pool, a hand-off per request)."""
    state: AppState = request.app.state.openfusion
    return state


State = Annotated[AppState, Depends(get_state)]
