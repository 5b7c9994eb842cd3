"""The app factory: `create_app(settings)` builds the FastAPI app; its lifespan owns the clients and stores."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from pydantic import SecretStr

from openfusion import __version__, memory
from openfusion.access.config import AccessConfig, redis_url
from openfusion.access.control import build_access
from openfusion.access.keys import plaintext_keys
from openfusion.activity import ActivityWriter, PriceTable, open_store
from openfusion.activity.stored import ResponseStore
from openfusion.api import activity, chat, health, metrics, models
from openfusion.api.access import install_access
from openfusion.api.deps import AppState
from openfusion.api.dialects import ERROR_DIALECTS
from openfusion.api.handlers import install as install_error_handlers
from openfusion.api.hot_routes import HotRouteApp
from openfusion.api.messages import route as messages
from openfusion.api.responses import route as responses
from openfusion.api.responses.keeper import ResponseKeeper, purge_now_and_then
from openfusion.api.shutdown import ACTIVITY_FLUSH_S, Drain
from openfusion.cache.service import ResultCache
from openfusion.cache.stores import build_store, check_backend
from openfusion.errors import ConfigError
from openfusion.masking import SecretMasker
from openfusion.observability.metrics import Metrics
from openfusion.observability.tracing import tracing_config
from openfusion.pipeline.warm import warm_pipeline
from openfusion.presets import check_served, load_presets, shipped_presets_dir
from openfusion.settings import Settings, load_settings
from openfusion.upstream.client import UpstreamClient, build_http_client
from openfusion.upstream.providers import ProviderRegistry
from openfusion.upstream.web import ExtractionPool, WebResearch, build_fetch_client

log = logging.getLogger("openfusion")


def _search_key(settings: Settings, environ: Mapping[str, str]) -> str:
    key_env = settings.research.search.key_env if settings.research.search else None
    return environ.get(key_env, "").strip() if key_env else ""


async def _web_research(
    settings: Settings,
    environ: Mapping[str, str],
    http: httpx.AsyncClient,
    resources: contextlib.AsyncExitStack,
    masker: SecretMasker,
) -> WebResearch | None:
    """The panel's web tools: search through the shared client, fetch through its own hardened client."""
    config = settings.research
    if config.search is None and not config.fetch.enabled:
        return None
    key = _search_key(settings, environ)
    fetch_http = extractor = None
    if config.fetch.enabled:
        fetch_http = await resources.enter_async_context(build_fetch_client())
        extractor = ExtractionPool.from_config(config.fetch)  # its workers start on the first extraction
        resources.push_async_callback(extractor.aclose)
    api_key = SecretStr(key) if key else None
    return WebResearch.from_config(
        config, http=http, fetch_http=fetch_http, api_key=api_key, masker=masker, extractor=extractor
    )


async def _refresh_prices(prices: PriceTable, upstream: UpstreamClient, provider: str) -> None:
    """Fill the price table from a provider's /models listing, in the background: start-up never waits on it."""
    try:
        await prices.refresh(lambda: upstream.list_models(provider))
    except Exception as exc:  # prices stay as configured; costs without a price stay unknown
        log.warning("could not refresh prices from %s: %s", provider, exc)


def _tracing(app: FastAPI, settings: Settings, environ: Mapping[str, str], masker: SecretMasker) -> Any:
    """Trace every request when an OTLP endpoint is configured; OpenTelemetry is not even imported otherwise."""
    config = tracing_config(settings.tracing, environ)
    if config is None:
        return None
    try:
        from openfusion.api.tracing import install_tracing
        from openfusion.observability.otel import Tracing
    except ImportError as exc:
        raise ConfigError(
            f"tracing is configured (to {config.traces_endpoint}) but OpenTelemetry is not installed:"
            " pip install 'openfusion[otel]'"
        ) from exc
    tracing = Tracing(config, masker)
    install_tracing(app, tracing)
    return tracing


def _response_store(store: object, settings: Settings) -> ResponseKeeper | None:
    """The activity store keeps Responses API responses, unless their retention is 0."""
    days = settings.activity.response_retention_days
    return ResponseKeeper(store, retention_days=days) if days > 0 and isinstance(store, ResponseStore) else None


def _warn_if_unusable(registry: ProviderRegistry) -> None:
    """At start-up, say loudly when no model can be served, or which configured keys are missing."""
    problem = registry.unusable()
    if problem is not None:
        log.warning(
            "%s: every model request will fail and /readyz answers 503 until a provider key is set (e.g. "
            "OPENROUTER_API_KEY, OPENAI_API_KEY, ANTHROPIC_API_KEY) or [[providers]] are added to the config file",
            problem,
        )
    elif missing := registry.missing_keys():
        log.warning("provider keys not set: %s; requests for their models will fail", ", ".join(missing))


def create_app(
    settings: Settings | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    http_client: httpx.AsyncClient | None = None,
    metrics_dir: Path | None = None,
) -> FastAPI:
    """Build the app. Configuration errors surface here, before anything listens.

    `metrics_dir`: the multiprocess metrics directory of a worker of several (`openfusion serve --workers`).
    """
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
    _warn_if_unusable(registry)
    check_served(presets, own_dir=settings.presets_dir, registry=registry)
    access_config = AccessConfig.model_validate(settings, from_attributes=True)
    access = build_access(access_config, environ)  # key variables are checked here, before anything listens
    cache_redis = redis_url(access_config, environ)
    check_backend(settings.cache, redis_url=cache_redis, activity=settings.activity.enabled)
    drain = Drain()  # the server ends the shutdown grace period through it (app.state.drain)
    # Every secret the server knows, masked in whatever an upstream sends back (it may echo a key).
    masker = SecretMasker(
        [*registry.secrets(), _search_key(settings, environ), *plaintext_keys(access_config, environ)]
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as resources:
            if tracing is not None:  # per process (each worker's own), and the last to close: it flushes
                tracing.start()
                resources.push_async_callback(tracing.aclose)
            resources.push_async_callback(access.aclose)
            http = http_client or await resources.enter_async_context(build_http_client(settings.http))
            upstream = UpstreamClient(
                http, registry, settings.retry, masker=masker, call_timeout_s=settings.http.call_timeout_s
            )
            # The first request's one-time work, done before the server says it serves: inside the first panelists'
            # time limits it could cost them their answers on a loaded machine.
            warm_pipeline()
            upstream.prepare(slug for preset in presets.values() for slug in preset.slugs)
            store = await open_store(settings.activity, environ) if settings.activity.enabled else None
            writer = None
            if store is not None:
                resources.push_async_callback(store.close)
                shared = bool(environ.get("DATABASE_URL", "").strip())  # PostgreSQL, as open_store chose
                writer = ActivityWriter.from_settings(store, settings.activity, shared=shared)
                writer.start()
                # Runs first: flushes the queue into the open store, or counts it lost when the store does not answer.
                resources.push_async_callback(writer.aclose, timeout_s=ACTIVITY_FLUSH_S)
            app.state.activity_store = store
            if isinstance(store, ResponseStore):  # also with a retention of 0: what was kept before goes
                days = settings.activity.response_retention_days
                purging = asyncio.create_task(purge_now_and_then(store, retention_days=days))
                resources.callback(purging.cancel)
            prices = PriceTable(settings.pricing.models)
            if settings.pricing.refresh_from:
                refresh = asyncio.create_task(_refresh_prices(prices, upstream, settings.pricing.refresh_from))
                resources.callback(refresh.cancel)
            if (trim := memory.malloc_trim()) is not None:  # memory a burst freed, back to the system once it is over
                trimmer = memory.BurstTrimmer(
                    drain.in_flight, trim, min_burst=memory.MIN_BURST, settle=memory.SETTLE_CHECKS
                )
                trimming = asyncio.create_task(trimmer.run(memory.CHECK_EVERY_S))
                resources.callback(trimming.cancel)
            metrics = Metrics(metrics_dir)
            cache_store = build_store(
                settings.cache, redis_url=cache_redis, prefix=settings.limits.redis_prefix,
                database=store,
            )  # fmt: skip
            cache = ResultCache(cache_store, settings.cache, metrics)
            resources.push_async_callback(cache.aclose)
            app.state.openfusion = state = AppState(
                settings=settings,
                registry=registry,
                presets=presets,
                upstream=upstream,
                research=await _web_research(settings, environ, http, resources, masker),
                activity=writer,
                prices=prices,
                drain=drain,
                responses=_response_store(store, settings),
                metrics=metrics,
                cache=cache,
            )
            if writer is not None and (publishing := state.metrics.watch_activity(writer)) is not None:
                resources.callback(publishing.cancel)
            yield
            # Requests the server cancelled at the last moment are still recording themselves: their
            # records go into the writer before it closes.
            await drain.wait_closed(timeout_s=5.0)

    app = HotRouteApp(
        title="openfusion",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # A trailing slash is another path (404 in the caller's dialect), not a bare redirect whose Location comes
        # from the client's own Host header.
        redirect_slashes=False,
    )
    app.state.drain = drain
    app.state.settings = settings  # the server's own options (`[server]`) are read from here by whoever serves it
    install_error_handlers(app, dialects=ERROR_DIALECTS)
    install_access(app, access, cors=access_config.cors)
    tracing = _tracing(app, settings, environ, masker)  # added last: its middleware runs first
    app.serve_directly(chat.router, responses.router, messages.router)  # the surfaces that call models
    for router in (models.router, health.router, activity.router, metrics.router):
        app.include_router(router)
    return app
