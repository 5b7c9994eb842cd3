"""The model-calling routes' short way in: the same answers as through the whole middleware stack, without it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from fakes.upstream import FakeUpstream, wait_until
from openfusion.api import chat

from .conftest import bearer, chat_body

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]
KEY = "sk-client-hot-0123456789"
PRIVATE = {"cache-control": "no-store", "x-frame-options": "DENY", "x-content-type-options": "nosniff"}


@contextmanager
def counting_stack(app: FastAPI) -> Iterator[list[str]]:
    """The paths of the requests that went through the app's middleware stack (built when its lifespan began)."""
    paths: list[str] = []
    stack = app.middleware_stack
    assert stack is not None

    async def counted(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            paths.append(scope["path"])
        await stack(scope, receive, send)

    app.middleware_stack = counted
    try:
        yield paths
    finally:
        app.middleware_stack = stack


def private(response: httpx.Response) -> dict[str, str]:
    return {name: response.headers.get(name, "") for name in PRIVATE}


def test_model_routes_skip_the_middleware_stack_and_answer_alike(upstream: FakeUpstream, serve: Serve) -> None:
    with serve({"api_keys": KEY}) as (url, app), counting_stack(app) as through_stack:
        answer = httpx.post(f"{url}/v1/chat/completions", json=chat_body("fake/a"), headers=bearer(KEY))
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-generation-id"].startswith("gen-")
        assert private(answer) == PRIVATE
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=chat_body("fusion/trio", stream=True), headers=bearer(KEY)
        ) as streamed:
            assert streamed.status_code == 200
            assert private(streamed) == PRIVATE
            assert b"".join(streamed.iter_bytes()).endswith(b"data: [DONE]\n\n")
        # Refusals: the key check's (with its challenge) and the browser guard's, in each path's own shape.
        anonymous = httpx.post(f"{url}/v1/messages", json={"model": "fake/a", "max_tokens": 5, "messages": []})
        assert anonymous.status_code == 401
        assert anonymous.json()["type"] == "error"  # Anthropic's error shape
        assert anonymous.headers["www-authenticate"] == 'Bearer realm="openfusion"'
        assert private(anonymous) == PRIVATE
        typeless = httpx.post(
            f"{url}/v1/responses", content=b"{}", headers={**bearer(KEY), "Content-Type": "text/plain"}
        )
        assert (typeless.status_code, typeless.json()["error"]["code"]) == (415, "unsupported_media_type")
        assert private(typeless) == PRIVATE
        # The route's own errors go through the app's handlers.
        bad = httpx.post(f"{url}/api/v1/chat/completions", json={"model": "fake/a"}, headers=bearer(KEY))
        assert (bad.status_code, bad.json()["error"]["type"]) == (400, "invalid_request_error")
        assert through_stack == []
        # Every other route, and any other method, takes the whole stack.
        assert httpx.get(f"{url}/v1/models", headers=bearer(KEY)).status_code == 200
        wrong_method = httpx.get(f"{url}/v1/chat/completions", headers=bearer(KEY))
        assert wrong_method.status_code == 405
        assert through_stack == ["/v1/models", "/v1/chat/completions"]


def test_an_unexpected_error_is_a_500_in_the_callers_shape(
    upstream: FakeUpstream, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(raw: bytes) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(chat, "parse_chat_request", broken)
    with serve({"api_keys": KEY}) as (url, app), counting_stack(app) as through_stack:
        failed = httpx.post(f"{url}/v1/chat/completions", json=chat_body("fake/a"), headers=bearer(KEY))
        assert failed.status_code == 500
        assert failed.json()["error"]["code"] == "internal_error"
        assert "a bug" not in failed.text
        assert through_stack == []


def test_a_request_that_crashes_once_admitted_gets_its_record_s_id(
    upstream: FakeUpstream, serve: Serve, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A bug after the request was admitted: a 500 whose X-Generation-Id finds the error record it left."""

    async def broken(exchange: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(chat, "_fusion", broken)
    activity = {"path": str(tmp_path / "activity.sqlite3"), "flush_interval_s": 0.05}
    with serve({"api_keys": KEY}, activity=activity) as (url, _):
        failed = httpx.post(f"{url}/v1/chat/completions", json=chat_body("fusion/trio"), headers=bearer(KEY))
        assert failed.status_code == 500
        assert (failed.json()["error"]["code"], "a bug" in failed.text) == ("internal_error", False)
        generation_id = failed.headers["x-generation-id"]

        def record() -> httpx.Response:
            return httpx.get(f"{url}/api/v1/generation", params={"id": generation_id}, headers=bearer(KEY))

        wait_until(lambda: record().status_code == 200, timeout=10)
        data = record().json()["data"]
        assert (data["status"], data["failure_reason"], data["status_code"]) == ("error", "unexpected_error", 500)


def test_with_a_middleware_of_its_own_the_app_takes_the_whole_stack(upstream: FakeUpstream, serve: Serve) -> None:
    origin = "https://app.example"
    with serve({"api_keys": KEY, "cors": {"allow_origins": [origin]}}) as (url, app), counting_stack(app) as through:
        answer = httpx.post(
            f"{url}/v1/chat/completions", json=chat_body("fake/a"), headers={**bearer(KEY), "Origin": origin}
        )
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == origin
        assert through == ["/v1/chat/completions"]


def test_a_path_not_exactly_a_model_route_takes_the_whole_stack(upstream: FakeUpstream, serve: Serve) -> None:
    with serve({"api_keys": KEY}) as (url, app), counting_stack(app) as through_stack:
        slashed = httpx.post(f"{url}/v1/chat/completions/", json=chat_body("fake/a"), headers=bearer(KEY))
        assert slashed.status_code == 404 and "location" not in slashed.headers  # another path, not a redirect
        assert through_stack == ["/v1/chat/completions/"]
