"""Fusion as a server tool under a client key: the tool's parameters obey the key's scope and the guards."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fakes.upstream import FakeUpstream, Script

from .conftest import bearer, chat_body

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]
KEY = "sk-duo-only-0123456789"
# One preset, the caller's own model to drive it, and one model of its own choosing.
SCOPED = {"keys": [{"name": "duo-only", "key_env": "DUO_KEY", "models": ["fusion/duo", "fake/outer", "fake/c"]}]}
ENVIRON = {"DUO_KEY": KEY}


def tool_mode(**parameters: Any) -> dict[str, Any]:
    """A request on the caller's model with fusion as a server tool, its parameters given."""
    return chat_body("fake/outer", tools=[{"type": "openrouter:fusion", "parameters": parameters}],
                     tool_choice="required")  # fmt: skip


def post(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=bearer(KEY), timeout=20)


def script_outer(upstream: FakeUpstream) -> None:
    call = {"function": {"name": "fusion", "arguments": json.dumps({"prompt": "q"})}}
    upstream.script("outer", Script(tool_calls=[call]), Script(content="Done."))


@pytest.mark.parametrize(
    ("parameters", "param", "model"),
    [
        ({"preset": "duo", "analysis_models": ["fake/c", "fake/secret"]},
         "tools[0].parameters.analysis_models[1]", "fake/secret"),
        ({"preset": "duo", "model": "fake/secret-judge"}, "tools[0].parameters.model", "fake/secret-judge"),
        ({"preset": "duo", "judge_fallbacks": ["fake/secret-judge"]},
         "tools[0].parameters.judge_fallbacks[0]", "fake/secret-judge"),
        ({"analysis_models": ["fake/c"]}, "model", "the default fusion preset"),  # not in scope, nor named
    ],
)  # fmt: skip
def test_models_in_the_tools_parameters_are_checked_against_the_keys_scope(
    upstream: FakeUpstream, serve: Serve, parameters: dict[str, Any], param: str, model: str
) -> None:
    script_outer(upstream)
    with serve(SCOPED, environ=ENVIRON) as (url, _):
        for stream in (False, True):
            response = post(url, {**tool_mode(**parameters), "stream": stream})
            assert response.status_code == 403, response.text
            error = response.json()["error"]
            assert (error["code"], error["param"]) == ("model_not_allowed", param)
            assert model in error["message"]
    assert upstream.calls == []  # refused before the outer model, the panel or the judge was called


def test_the_scoped_preset_runs_in_tool_mode(upstream: FakeUpstream, serve: Serve) -> None:
    script_outer(upstream)
    with serve(SCOPED, environ=ENVIRON) as (url, _):
        response = post(url, tool_mode(preset="duo"))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Done."
    # The preset's panel (fake/a, fake/b) is the operator's choice: allowed with the preset, though the key
    # names neither. Without a judge in the parameters the caller's model judges.
    assert {c.model for c in upstream.calls} == {"a", "b", "outer"}


@pytest.mark.parametrize(
    ("parameters", "param"),
    [
        ({"max_completion_tokens": 1_000_000}, "tools[0].parameters.max_completion_tokens"),
        ({"reasoning": {"max_tokens": 5000}}, "tools[0].parameters.reasoning.max_tokens"),
        ({"analysis_models": ["fake/c", "fake/c", "fake/c"]}, "tools[0].parameters.analysis_models"),
    ],
)
def test_the_guards_hold_for_the_tools_parameters(
    upstream: FakeUpstream, serve: Serve, parameters: dict[str, Any], param: str
) -> None:
    script_outer(upstream)
    guards = {"guards": {"max_tokens": 100, "max_panel_size": 2}}
    with serve({**SCOPED, **guards}, environ=ENVIRON) as (url, _):
        response = post(url, tool_mode(preset="duo", **parameters))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert upstream.calls == []  # nothing of the 1,000,000 tokens went upstream
