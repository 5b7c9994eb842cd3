"""The app factory: `create_app(settings)` builds the FastAPI app; its lifespan owns the upstream client."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import httpx
from fastapi import FastAPI

from openfusion import __version__
from openfusion.api import chat, health, models
from openfusion.api.deps import AppState
from openfusion.api.handlers import install as install_error_handlers
from openfusion.errors import ConfigError
from openfusion.presets import load_presets, shipped_presets_dir
from openfusion.settings import Settings, load_settings
from openfusion.upstream.client import UpstreamClient, build_http_client
from openfusion.upstream.providers import ProviderRegistry


def create_app(
    settings: Settings | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    http_client: httpx.AsyncClient | None = None,
) -> FastAPI:
    """Build the app. Configuration errors surface here, before anything listens."""
    environ = os.environ if environ is None else environ
    if settings is None:
        config = environ.get("OPENFUSION_CONFIG")
        settings = load_settings(Path(config) if config else None)
    presets = load_presets(shipped_presets_dir(), settings.presets_dir)
    if settings.default_preset not in presets:
        raise ConfigError(
            f"default_preset {settings.default_preset!r} is not a preset; available: {', '.join(sorted(presets))}"
        )
    registry = ProviderRegistry.from_settings(settings, environ)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        http = http_client or build_http_client(settings.http)
        app.state.openfusion = AppState(
            settings=settings,
            registry=registry,
            presets=presets,
            upstream=UpstreamClient(http, registry, settings.retry),
        )
        try:
            yield
        finally:
            if http_client is None:
                await http.aclose()

    app = FastAPI(
        title="openfusion",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    for router in (chat.router, models.router, health.router):
        app.include_router(router)
    return app
