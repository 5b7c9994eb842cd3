"""Request guards and CORS, end to end."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fakes.upstream import FakeUpstream

from .conftest import bearer, chat_body

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]
GUARDS = {"guards": {"max_messages": 2, "max_tokens": 1000, "max_panel_size": 2}}
ORIGIN = "https://app.example"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**chat_body("fake/a"), "messages": [{"role": "user", "content": "x"}] * 3}, "messages"),
        (chat_body("fake/a", max_tokens=1001), "max_tokens"),
        (chat_body("fusion/duo", max_completion_tokens=5000), "max_completion_tokens"),
        (
            chat_body("fusion/duo", plugins=[{"id": "fusion", "max_completion_tokens": 2000}]),
            "plugins[0].max_completion_tokens",
        ),
        (
            chat_body("fusion/duo", plugins=[{"id": "fusion", "analysis_models": ["fake/a", "fake/b", "fake/c"]}]),
            "plugins[0].analysis_models",
        ),
        (chat_body("fusion/trio"), "model"),
    ],
)
def test_guards_refuse_with_400_naming_the_field(
    upstream: FakeUpstream, serve: Serve, body: dict[str, Any], param: str
) -> None:
    with serve(GUARDS) as (url, _):
        for stream in (False, True):
            response = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": stream})
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_request", param)
    assert upstream.calls == []


def test_requests_within_the_guards_pass(upstream: FakeUpstream, serve: Serve) -> None:
    with serve(GUARDS) as (url, _):
        body = {**chat_body("fusion/duo", max_tokens=1000), "messages": [{"role": "user", "content": "x"}] * 2}
        assert httpx.post(f"{url}/v1/chat/completions", json=body).status_code == 200


def test_the_body_size_limit_still_answers_413(upstream: FakeUpstream, serve: Serve) -> None:
    with serve(GUARDS, max_body_bytes=2048) as (url, _):
        body = chat_body("fake/a")
        body["messages"][0]["content"] = "x" * 4096
        assert httpx.post(f"{url}/v1/chat/completions", json=body).status_code == 413


def preflight(url: str, origin: str = ORIGIN) -> httpx.Response:
    return httpx.options(
        f"{url}/v1/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
        },
    )


def test_cors_is_off_by_default(upstream: FakeUpstream, serve: Serve) -> None:
    with serve({"api_keys": "sk-x-4f9a2c7e1d3b5a"}) as (url, _):
        response = preflight(url)
        assert response.status_code == 403  # another origin, CORS off: refused before the key check
        assert "access-control-allow-origin" not in response.headers
        # Without CORS a browser request from another origin is refused outright (see test_cross_site.py).
        answer = httpx.get(f"{url}/v1/models", headers={"Origin": ORIGIN, **bearer("sk-x-4f9a2c7e1d3b5a")})
        assert answer.status_code == 403 and "access-control-allow-origin" not in answer.headers
        assert httpx.get(f"{url}/v1/models", headers=bearer("sk-x-4f9a2c7e1d3b5a")).status_code == 200


def test_cors_with_configured_origins(upstream: FakeUpstream, serve: Serve) -> None:
    with serve({"api_keys": "sk-x-4f9a2c7e1d3b5a", "cors": {"allow_origins": [ORIGIN]}}) as (url, _):
        allowed = preflight(url)
        assert allowed.status_code == 200  # answered before the key check: browsers send no key here
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert "x-stainless-os" in allowed.headers["access-control-allow-headers"].lower()
        assert preflight(url, "https://evil.example").status_code == 400

        answer = httpx.post(
            f"{url}/v1/chat/completions",
            json=chat_body("fusion"),
            headers={"Origin": ORIGIN, **bearer("sk-x-4f9a2c7e1d3b5a")},
        )
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        assert "X-Generation-Id" in answer.headers["access-control-expose-headers"]
        assert "X-Openfusion-Cache" in answer.headers["access-control-expose-headers"]  # the result cache's answer
        # Errors carry CORS headers too, so a browser app can read why it was refused.
        refused = httpx.get(f"{url}/v1/models", headers={"Origin": ORIGIN})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN
