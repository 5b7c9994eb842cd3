"""GET /readyz: providers configured and every store reachable, revealing nothing secret."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import openfusion.api.health as health
from fakes.upstream import FakeUpstream

from .conftest import REDIS_URL
from .test_limiters import closed_port

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]


class Store:
    """An activity store's ping: fine, failing or hanging."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour

    async def ping(self) -> None:
        if self.behaviour == "down":
            raise ConnectionRefusedError("postgresql://admin:db-secret@10.0.0.5/activity refused")
        if self.behaviour == "hangs":
            await asyncio.sleep(30)


def readyz(url: str) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{url}/readyz", timeout=10)
    return response.status_code, response.json()


def test_ready_with_a_provider_and_no_stores(upstream: FakeUpstream, serve: Serve) -> None:
    with serve() as (url, _):
        assert readyz(url) == (200, {"status": "ready", "checks": {"providers": "ok"}})


def test_ready_with_the_limits_in_redis(upstream: FakeUpstream, serve: Serve, redis_prefix: str) -> None:
    # REDIS_URL from the environment is enough (like DATABASE_URL for the activity store).
    with serve({"limits": {"redis_prefix": redis_prefix}}, environ={"REDIS_URL": REDIS_URL}) as (url, app):
        assert app.state.access.limiter.shared
        app.state.activity_store = Store("ok")
        assert readyz(url) == (
            200,
            {"status": "ready", "checks": {"providers": "ok", "activity_store": "ok", "limits_store": "ok"}},
        )


def test_not_ready_when_redis_is_unreachable(upstream: FakeUpstream, serve: Serve) -> None:
    with serve({"redis_url": f"redis://:redis-secret@127.0.0.1:{closed_port()}/0"}) as (url, _):
        response = httpx.get(f"{url}/readyz", timeout=10)
        assert response.status_code == 503
        assert response.json() == {"status": "not_ready", "checks": {"providers": "ok", "limits_store": "unreachable"}}
        assert "redis-secret" not in response.text and "127.0.0.1" not in response.text
        assert httpx.get(f"{url}/healthz").status_code == 200  # alive, just not ready


@pytest.mark.parametrize(("behaviour", "result"), [("down", "unreachable"), ("hangs", "timeout")])
def test_not_ready_when_the_activity_store_fails(
    upstream: FakeUpstream,
    serve: Serve,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    behaviour: str,
    result: str,
) -> None:
    monkeypatch.setattr(health, "_PROBE_TIMEOUT_S", 0.2)
    with serve() as (url, app):
        app.state.activity_store = Store(behaviour)
        response = httpx.get(f"{url}/readyz", timeout=10)
    assert response.status_code == 503
    assert response.json()["checks"] == {"providers": "ok", "activity_store": result}
    assert "db-secret" not in response.text and "db-secret" not in caplog.text


def test_not_ready_without_a_configured_provider(upstream: FakeUpstream, serve: Serve) -> None:
    # The always-on Ollama built-in alone does not count: nobody configured anything.
    with serve(providers=[], builtin_providers=True) as (url, _):
        assert readyz(url) == (503, {"status": "not_ready", "checks": {"providers": "no provider configured"}})
    with serve(providers=[], builtin_providers=True, environ={"OPENROUTER_API_KEY": "sk-or-secret"}) as (url, _):
        status, body = readyz(url)
        assert (status, body["checks"]) == (200, {"providers": "ok"})
        assert "sk-or" not in str(body)
