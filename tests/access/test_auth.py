"""Client keys end to end: every route but the health probes needs one; scopes give 403."""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, WebSocket
from starlette.routing import BaseRoute, Route
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from e2e.processes import metric
from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream
from openfusion.api.access import client_key_name
from openfusion.app import create_app
from openfusion.settings import load_settings

from .conftest import bearer, build_app, chat_body

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]
KEYS = {"api_keys": "sk-client-one-4f9a2c,sk-client-two-4f9a2c"}
OPEN = {"/healthz", "/readyz"}


def walk(routes: list[BaseRoute]) -> list[Route]:
    """Every route, through included routers (which FastAPI may keep as wrappers)."""
    found: list[Route] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            found += walk(inner.routes)
        elif isinstance(route, Route):
            found.append(route)
    return found


def api_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, found from the app itself, and two it does not."""
    routes = [
        (method, route.path)
        for route in walk(app.routes)
        if route.path not in OPEN
        for method in sorted(route.methods or ())
        if method != "HEAD"
    ]
    assert {"/v1/chat/completions", "/api/v1/chat/completions", "/v1/models"} <= {path for _, path in routes}
    return [*routes, ("GET", "/activity"), ("GET", "/v1/no-such-route")]


def call(url: str, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    # One body every POST route takes: `messages` for Chat Completions, `input` for Responses,
    # `max_tokens` for Anthropic Messages.
    body = {**chat_body("fake/a"), "input": "Hi", "max_tokens": 16} if method == "POST" else None
    return httpx.request(method, url + path, json=body, headers=headers, timeout=10)


@pytest.mark.parametrize(
    ("headers", "message", "reason"),
    [
        ({}, "Missing API key", "missing"),
        ({"Authorization": "Bearer"}, "Missing API key", "malformed"),
        (bearer("sk-client-three"), "Invalid API key", "unknown"),
        (bearer("sk-client-on"), "Invalid API key", "unknown"),
        ({"Authorization": "sk-client-one-4f9a2c"}, "Missing API key", "malformed"),
        ({"Authorization": "Token sk-client-one-4f9a2c"}, "Missing API key", "malformed"),
        ({"X-Api-Key": "sk-client-three"}, "Invalid API key", "unknown"),
        ({"X-Api-Key": ""}, "Missing API key", "malformed"),
        ({"Authorization": "Basic %%%"}, "Missing API key", "malformed"),
    ],
)
def test_every_api_route_refuses_a_missing_or_wrong_key(
    upstream: FakeUpstream, serve: Serve, headers: dict[str, str], message: str, reason: str
) -> None:
    # Every route with a wrong key would set the brake off (test_auth_brake.py): it is off here.
    with serve({**KEYS, "limits": {"auth_failures": 0}}) as (url, app):
        routes = api_routes(app)
        for method, path in routes:
            response = call(url, method, path, headers)
            assert response.status_code == 401, (method, path)
            body = response.json()
            error = body["error"]
            if path.startswith(("/v1/messages", "/api/v1/messages")):  # Anthropic's shape on its surface
                assert body["type"] == "error" and "code" not in error
            else:
                assert error["code"] == "invalid_api_key"
            assert error["type"] == "authentication_error"
            assert error["message"].startswith(message)
            assert "sk-client" not in response.text
            assert response.headers["www-authenticate"].endswith('realm="openfusion"')
        counted = app.state.openfusion.metrics.render().decode()
    assert upstream.calls == []
    assert metric(counted, "openfusion_auth_refusals_total", reason=reason) == len(routes)  # each, by its reason


def test_health_probes_never_need_a_key(upstream: FakeUpstream, serve: Serve) -> None:
    with serve(KEYS) as (url, _):
        for path in sorted(OPEN):
            for headers in ({}, bearer("wrong")):
                response = httpx.get(url + path, headers=headers)
                assert response.status_code == 200, path
                assert "sk-client" not in response.text


@pytest.mark.parametrize("present", [bearer, lambda key: {"X-Api-Key": key}], ids=["bearer", "x-api-key"])
def test_a_valid_key_opens_every_route(
    upstream: FakeUpstream, serve: Serve, present: Callable[[str], dict[str, str]]
) -> None:
    with serve(KEYS) as (url, app):
        for key in ("sk-client-one-4f9a2c", "sk-client-two-4f9a2c"):
            for method, path in api_routes(app):
                response = call(url, method, path, present(key))
                # The activity routes answer 404 on a server that records no activity (as here), and so does
                # a stored response (none is kept without an activity store).
                unrecorded = path.startswith(("/activity", "/api/v1/generation", "/v1/activity"))
                unrecorded = unrecorded or (method == "GET" and path.endswith("/responses/{response_id}"))
                unrecorded = unrecorded or path.endswith("/models/{model_id:path}")  # no model has that id
                expected = 404 if unrecorded or path == "/v1/no-such-route" else 200
                if path == "/metrics":  # past the key check, but the whole server's metrics are an admin's
                    expected = 403
                assert response.status_code == expected, (method, path, response.text)
        fusion = httpx.post(
            f"{url}/v1/chat/completions", json=chat_body("fusion"), headers=bearer("sk-client-one-4f9a2c")
        )
        assert fusion.status_code == 200
    # The client's key stays here: upstream calls carry the provider's key.
    assert upstream.calls
    assert {call.headers["authorization"] for call in upstream.calls} == {"Bearer sk-provider-secret"}


def test_the_bearer_scheme_is_case_insensitive(upstream: FakeUpstream, serve: Serve) -> None:
    with serve(KEYS) as (url, _):
        response = httpx.get(f"{url}/v1/models", headers={"Authorization": "bearer  sk-client-two-4f9a2c"})
        assert response.status_code == 200


def test_a_browser_may_send_the_key_as_basic_auth_password_on_the_activity_pages(
    upstream: FakeUpstream, serve: Serve
) -> None:
    with serve(KEYS) as (url, _):
        prompt = httpx.get(f"{url}/activity")
        assert prompt.status_code == 401
        assert prompt.headers["www-authenticate"] == 'Basic realm="openfusion"'
        assert httpx.get(f"{url}/v1/models").headers["www-authenticate"] == 'Bearer realm="openfusion"'
        good = base64.b64encode(b"anyone:sk-client-one-4f9a2c").decode()
        # Past the key check (activity is off here, so the page itself is a 404).
        assert httpx.get(f"{url}/activity", headers={"Authorization": f"Basic {good}"}).status_code == 404
        bad = base64.b64encode(b"sk-client-one-4f9a2c:").decode()  # the key must be the password
        assert httpx.get(f"{url}/activity", headers={"Authorization": f"Basic {bad}"}).status_code == 401
        # The API takes a bearer token only (see test_cross_site.py for why).
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": f"Basic {good}"}).status_code == 401


def test_without_keys_every_route_is_open(upstream: FakeUpstream, serve: Serve) -> None:
    with serve() as (url, _):
        assert httpx.get(f"{url}/v1/models").status_code == 200
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body("fake/a")).status_code == 200
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body("fusion")).status_code == 200


def test_keys_from_the_environment_variable(
    upstream: FakeUpstream, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENFUSION_API_KEYS", "sk-from-env-1-4f9a2c, sk-from-env-2-4f9a2c")
    with serve({}) as (url, app):  # Settings reads OPENFUSION_API_KEYS itself
        fingerprints = [
            hashlib.sha256(key.encode()).hexdigest()[:12] for key in ("sk-from-env-1-4f9a2c", "sk-from-env-2-4f9a2c")
        ]
        assert app.state.access.keys.names == [f"env-{fingerprint}" for fingerprint in fingerprints]
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/v1/models", headers=bearer("sk-from-env-2-4f9a2c")).status_code == 200


def test_the_model_list_shows_a_key_the_fusion_models_its_scope_allows(upstream: FakeUpstream, serve: Serve) -> None:
    """A key scoped to one preset sees that one (and the aliases of the default preset, if it is that one): the list
    says nothing of what it cannot use."""
    keys = [
        {"name": "duo-only", "key_env": "DUO_KEY", "models": ["fusion/duo"]},
        {"name": "trio-only", "key_env": "TRIO_KEY", "models": ["fusion/trio", "fake/*"]},
        {"name": "plain", "key_env": "PLAIN_KEY", "models": ["fake/*"]},
    ]
    environ = {
        "DUO_KEY": "sk-duo-only-4f9a2c7e1d",
        "TRIO_KEY": "sk-trio-only-4f9a2c7e1d",
        "PLAIN_KEY": "sk-plain-4f9a2c7e1d",
    }
    with serve({"keys": keys}, environ=environ) as (url, _):

        def listed(key: str) -> set[str]:
            response = httpx.get(f"{url}/v1/models", headers=bearer(key))
            assert response.status_code == 200
            return {model["id"] for model in response.json()["data"]}

        duo, trio, plain = (listed(environ[name]) for name in ("DUO_KEY", "TRIO_KEY", "PLAIN_KEY"))

        def retrieved(key: str, model: str) -> int:
            return httpx.get(f"{url}/v1/models/{model}", headers=bearer(environ[key])).status_code

        # One model, asked for by id: what the scope leaves out answers as one nothing serves.
        assert [retrieved("DUO_KEY", m) for m in ("fusion/duo", "fusion/trio", "fake/a")] == [200, 404, 404]
        assert [retrieved("PLAIN_KEY", m) for m in ("fake/a", "fusion", "fusion/duo")] == [200, 404, 404]

    assert "fusion/duo" in duo and not {"fusion/trio", "fusion", "openrouter/fusion"} & duo
    assert {"fusion/trio", "fusion", "openrouter/fusion"} <= trio and "fusion/duo" not in trio  # trio: the default
    assert plain == set()


def test_named_keys_from_the_config_file(upstream: FakeUpstream, core_settings: dict[str, Any], tmp_path: Path) -> None:
    digest = hashlib.sha256(b"sk-team-b-4f9a2c7e1d").hexdigest()
    config = tmp_path / "openfusion.toml"
    config.write_text(
        f"""
[[keys]]
name = "team-a"
key_env = "TEAM_A_KEY"
models = ["fusion/*"]

[[keys]]
name = "team-b"
key_sha256 = "{digest}"
models = ["fake/*"]
"""
    )
    environ = {"TEAM_A_KEY": "sk-team-a-4f9a2c7e1d"}
    app = create_app(load_settings(config, **core_settings), environ={"FAKE_KEY": "x", **environ})
    with serve_in_thread(app) as url:

        def post(key: str, model: str) -> httpx.Response:
            return httpx.post(f"{url}/v1/chat/completions", json=chat_body(model), headers=bearer(key), timeout=10)

        assert post("sk-team-a-4f9a2c7e1d", "fusion").status_code == 200
        assert post("sk-team-b-4f9a2c7e1d", "fake/a").status_code == 200
        refused = post("sk-team-b-4f9a2c7e1d", "fusion")
        assert refused.status_code == 403
        assert refused.json()["error"] == {
            "message": "This API key (team-b) is not allowed to use 'fusion'.",  # not the default preset's name
            "type": "permission_error",
            "param": "model",
            "code": "model_not_allowed",
        }
        assert post("sk-team-a-4f9a2c7e1d", "fake/a").status_code == 403
        assert post(digest, "fake/a").status_code == 401  # the stored hash does not open anything


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat_body("fake/a"), "model"),
        (chat_body("fusion/duo"), "model"),
        (chat_body("fusion/trio", plugins=[{"id": "fusion", "preset": "duo"}]), "plugins[0].preset"),
        (
            chat_body("fusion/trio", plugins=[{"id": "fusion", "analysis_models": ["fake/b", "fake/x"]}]),
            "plugins[0].analysis_models[1]",
        ),
        (chat_body("fake/a", plugins=[{"id": "fusion"}]), "model"),
        (chat_body("fake/b", models=["fake/b", "fake/c"]), "models[1]"),
    ],
)
def test_a_scoped_out_model_is_403_before_anything_is_sent(
    upstream: FakeUpstream, serve: Serve, body: dict[str, Any], param: str
) -> None:
    keys = [{"name": "trio-only", "key_env": "K", "models": ["fusion/trio", "fake/b"]}]
    with serve({"keys": keys}, environ={"K": "sk-trio-4f9a2c7e1d3b"}) as (url, _):
        for stream in (False, True):
            response = httpx.post(
                f"{url}/v1/chat/completions", json={**body, "stream": stream}, headers=bearer("sk-trio-4f9a2c7e1d3b")
            )
            assert response.status_code == 403
            error = response.json()["error"]
            assert (error["code"], error["param"]) == ("model_not_allowed", param)
        ok = {**chat_body("fusion/trio"), "plugins": [{"id": "fusion", "analysis_models": ["fake/b"]}]}
        assert (
            httpx.post(f"{url}/v1/chat/completions", json=ok, headers=bearer("sk-trio-4f9a2c7e1d3b")).status_code == 200
        )
    assert {call.model for call in upstream.calls} == {"b", "judge", "synth"}


def test_keys_never_reach_the_logs(upstream: FakeUpstream, serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with serve(KEYS) as (url, _):
        httpx.get(f"{url}/v1/models", headers=bearer("sk-client-wrong"))
        httpx.get(f"{url}/v1/models", headers=bearer("sk-client-one-4f9a2c"))
        httpx.post(f"{url}/v1/chat/completions", json=chat_body("fusion"), headers=bearer("sk-client-two-4f9a2c"))
    assert caplog.records
    assert "sk-client" not in caplog.text


def test_routes_can_tell_which_key_called(upstream: FakeUpstream, core_settings: dict[str, Any]) -> None:
    app = build_app(
        core_settings, {"keys": [{"name": "team-a", "key_env": "K"}]}, environ={"K": "sk-team-a-4f9a2c7e1d"}
    )

    @app.get("/v1/whoami")
    async def whoami(request: Request) -> dict[str, str | None]:
        return {"key_name": client_key_name(request)}

    with serve_in_thread(app) as url:
        assert httpx.get(f"{url}/v1/whoami", headers=bearer("sk-team-a-4f9a2c7e1d")).json() == {"key_name": "team-a"}
    open_app = build_app(core_settings)
    open_app.add_api_route("/v1/whoami", whoami)
    with serve_in_thread(open_app) as url:
        assert httpx.get(f"{url}/v1/whoami").json() == {"key_name": None}


async def test_behind_a_proxy_prefix_the_probes_stay_open(core_settings: dict[str, Any]) -> None:
    app = build_app(core_settings, KEYS)
    transport = httpx.ASGITransport(app=app, root_path="/openfusion")
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
        assert (await client.get("/openfusion/healthz")).status_code == 200
        assert (await client.get("/openfusion/v1/models")).status_code == 401
        assert (await client.get("/openfusion/activity")).headers["www-authenticate"].startswith("Basic")


def test_websockets_need_a_key_too(core_settings: dict[str, Any]) -> None:
    app = build_app(core_settings, KEYS)

    @app.websocket("/v1/echo")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    with TestClient(app) as client:
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/v1/echo"):
            pass
        assert refused.value.code == 1008
        with client.websocket_connect("/v1/echo", headers=bearer("sk-client-one-4f9a2c")) as websocket:
            assert websocket.receive_text() == "hello"


def test_several_different_keys_in_one_request_are_refused(upstream: FakeUpstream, serve: Serve) -> None:
    """A repeated Authorization or x-api-key with different values: some servers take the first, others the last, so
    which key was meant is anyone's guess (it was the first Authorization, but the last x-api-key)."""
    good, wrong = "sk-client-one-4f9a2c", "sk-wrong-key-4f9a2c0000"
    with serve(KEYS) as (url, _):
        for name, form in (("authorization", "Bearer {}"), ("x-api-key", "{}")):
            for pair in ((good, wrong), (wrong, good)):
                headers = [(name, form.format(key)) for key in pair]
                refused = httpx.get(f"{url}/v1/models", headers=headers)
                assert refused.status_code == 401, (name, pair, refused.text)
                assert "Several different API keys" in refused.json()["error"]["message"]
            same = [(name, form.format(good)), (name, form.format(good))]  # repeated, but one key
            assert httpx.get(f"{url}/v1/models", headers=same).status_code == 200
