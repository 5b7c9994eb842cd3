"""A scoped key learns nothing of the presets outside its scope: not that they exist, nor their panel.

The key below may use `fusion/duo` and any `fusion/x-*` preset (none exists); the server also has
`fusion/trio`, three panelists and the default. Every refusal is checked on the three surfaces, before
anything is sent upstream.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fakes.upstream import FakeUpstream

from .conftest import bearer

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]
KEY = "sk-duo-tenant-0123456789"
SCOPED = {"keys": [{"name": "duo-tenant", "key_env": "DUO_KEY", "models": ["fusion/duo", "fusion/x-*", "fake/a"]}]}
ENVIRON = {"DUO_KEY": KEY}
HI = [{"role": "user", "content": "Hi"}]

# Each surface's path and the body of a request for `model`, with extra fields.
SURFACES: dict[str, tuple[str, Callable[..., dict[str, Any]]]] = {
    "chat": ("/v1/chat/completions", lambda model, **extra: {"model": model, "messages": HI, **extra}),
    "responses": ("/v1/responses", lambda model, **extra: {"model": model, "input": "Hi", **extra}),
    "messages": ("/v1/messages", lambda model, **extra: {"model": model, "max_tokens": 16, "messages": HI, **extra}),
}


def ask(url: str, surface: str, model: str, **extra: Any) -> httpx.Response:
    path, body = SURFACES[surface]
    return httpx.post(url + path, json=body(model, **extra), headers=bearer(KEY), timeout=20)


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def assert_reveals_nothing(response: httpx.Response, *, asked: str) -> None:
    """The answer names no out-of-scope preset but the one the client wrote, and no panel size."""
    text = response.text.replace(asked, "<asked>")
    assert "trio" not in text and "panel size" not in text, text


@pytest.mark.parametrize("surface", sorted(SURFACES))
def test_an_out_of_scope_preset_answers_as_one_that_does_not_exist(
    upstream: FakeUpstream, serve: Serve, surface: str
) -> None:
    with serve(SCOPED, environ=ENVIRON) as (url, _):
        existing = ask(url, surface, "fusion/trio")
        missing = ask(url, surface, "fusion/nope")
        # A quorum above the preset's panel was a 400 giving the panel size (3) of a preset the key may not use.
        quorum = ask(url, surface, "fusion/trio", plugins=[{"id": "fusion", "min_successful": 5}])
        plugin_quorum = ask(url, surface, "fake/a", plugins=[{"id": "fusion", "preset": "trio", "min_successful": 4}])
        plugin_missing = ask(url, surface, "fake/a", plugins=[{"id": "fusion", "preset": "nope", "min_successful": 4}])

    for response in (existing, missing, quorum, plugin_quorum, plugin_missing):
        assert response.status_code == 403, response.text
    assert existing.json() == quorum.json()
    assert existing.text.replace("trio", "nope") == missing.text  # the same answer, whether the preset exists or not
    assert plugin_quorum.text.replace("trio", "nope") == plugin_missing.text
    for response, asked in ((quorum, "fusion/trio"), (plugin_quorum, "fusion/trio"), (missing, "fusion/nope")):
        assert_reveals_nothing(response, asked=asked)
    assert upstream.calls == []


@pytest.mark.parametrize("surface", sorted(SURFACES))
def test_an_unknown_preset_in_scope_lists_only_the_presets_in_scope(
    upstream: FakeUpstream, serve: Serve, surface: str
) -> None:
    with serve(SCOPED, environ=ENVIRON) as (url, _):
        slug = ask(url, surface, "fusion/x-nope")
        plugin = ask(url, surface, "fake/a", plugins=[{"id": "fusion", "preset": "x-nope"}])
        unknown_alias = ask(url, surface, "openrouter/fusion-nope")

    assert slug.status_code == unknown_alias.status_code == 404, slug.text
    assert plugin.status_code == 400, plugin.text
    for response in (slug, plugin, unknown_alias):
        assert "duo" in error_of(response)["message"]  # what the key may use is listed …
        assert_reveals_nothing(response, asked="x-nope")  # … and nothing else
    assert upstream.calls == []


def test_tool_mode_names_no_preset_outside_the_scope(upstream: FakeUpstream, serve: Serve) -> None:
    def tool(**parameters: Any) -> dict[str, Any]:
        return {"tools": [{"type": "openrouter:fusion", "parameters": parameters}], "tool_choice": "required"}

    with serve(SCOPED, environ=ENVIRON) as (url, _):
        existing = ask(url, "chat", "fake/a", **tool(preset="trio", min_successful=4))
        missing = ask(url, "chat", "fake/a", **tool(preset="nope", min_successful=4))
        unknown = ask(url, "chat", "fake/a", **tool(preset="x-nope"))
        responses = ask(url, "responses", "fake/a", **tool(preset="trio", min_successful=4))

    assert existing.status_code == missing.status_code == responses.status_code == 403, existing.text
    assert existing.text.replace("trio", "nope") == missing.text
    assert error_of(existing)["param"] == "tools[0].parameters.preset"
    assert_reveals_nothing(existing, asked="'fusion/trio'")
    assert_reveals_nothing(responses, asked="'fusion/trio'")
    assert unknown.status_code == 400 and "duo" in error_of(unknown)["message"]
    assert_reveals_nothing(unknown, asked="x-nope")
    assert upstream.calls == []


@pytest.mark.parametrize("surface", sorted(SURFACES))
def test_the_default_preset_outside_the_scope_is_not_named(upstream: FakeUpstream, serve: Serve, surface: str) -> None:
    """`fusion` runs the default preset (trio): a key that may not use it is told so in the terms it used."""
    with serve(SCOPED, environ=ENVIRON) as (url, _):
        alias = ask(url, surface, "fusion")
        plugin = ask(url, surface, "fake/a", plugins=[{"id": "fusion", "min_successful": 4}])

    for response in (alias, plugin):
        assert response.status_code == 403, response.text
        assert_reveals_nothing(response, asked="'fusion'")
    assert "'fusion'" in error_of(alias)["message"] and "default fusion preset" in error_of(plugin)["message"]
    assert upstream.calls == []


def test_counting_tokens_names_no_preset_outside_the_scope(upstream: FakeUpstream, serve: Serve) -> None:
    with serve(SCOPED, environ=ENVIRON) as (url, _):
        existing = ask(url, "messages", "fusion/trio", plugins=[{"id": "fusion", "min_successful": 5}])
        counted = httpx.post(
            f"{url}/v1/messages/count_tokens",
            json={"model": "fusion/trio", "messages": HI, "plugins": [{"id": "fusion", "min_successful": 5}]},
            headers=bearer(KEY),
        )
        unknown = httpx.post(
            f"{url}/v1/messages/count_tokens", json={"model": "fusion/x-nope", "messages": HI}, headers=bearer(KEY)
        )

    assert counted.status_code == 403 and counted.json() == existing.json(), counted.text
    assert unknown.status_code == 404
    assert_reveals_nothing(unknown, asked="x-nope")
    assert upstream.calls == []
