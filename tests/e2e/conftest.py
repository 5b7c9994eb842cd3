"""End-to-end fixtures: a scripted fake upstream and the real openfusion app, both under real uvicorn."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, Script
from openfusion.app import create_app
from openfusion.settings import ProviderConfig, Settings

from .loopback_net import LoopbackNet

ANALYSIS = {
    "consensus": ["The sky is blue because of Rayleigh scattering."],
    "contradictions": [{"topic": "sunsets", "stances": [{"model": "fake/a", "stance": "red"}]}],
    "partial_coverage": [{"models": ["fake/b"], "point": "ozone"}],
    "unique_insights": [{"model": "fake/c", "insight": "Mars has blue sunsets."}],
    "blind_spots": ["Nobody mentioned the eye's sensitivity."],
}

TRIO = """
description = "three fake panelists"
analysis_models = ["fake/a", "fake/b", "fake/c"]
model = "fake/judge"
synthesis_model = "fake/synth"
max_completion_tokens = 1000
"""


def judge_script(analysis: dict[str, Any] | None = None) -> Script:
    """The fake judge's reply: a valid analysis."""
    return Script(content=json.dumps(analysis or ANALYSIS))


def server_environ(**values: str) -> dict[str, str]:
    """The environment a test server reads: the fake's key, and the session's temporary state directory (an
    explicit environment without XDG_STATE_HOME would put the default activity store under ~/.local/state)."""
    return {"FAKE_KEY": "sk-provider-secret", "XDG_STATE_HOME": os.environ["XDG_STATE_HOME"], **values}


def ask_text(base: str, *, model: str, messages: list[dict[str, Any]], extra: dict[str, Any], stream: bool) -> str:
    """The answer's text to a chat completion asked of the server at `base` by the official SDK, streamed or not."""
    with openai.OpenAI(base_url=f"{base}/v1", api_key="k", max_retries=0) as sdk:
        if stream:
            chunks = sdk.chat.completions.create(model=model, messages=messages, stream=True, extra_body=extra)
            return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        return sdk.chat.completions.create(model=model, messages=messages, extra_body=extra).choices[0].message.content


@pytest.fixture
def upstream(fake_upstream: tuple[FakeUpstream, str]) -> FakeUpstream:
    """The fake upstream, reset, with a valid judge scripted."""
    fake, _ = fake_upstream
    fake.reset()
    fake.script("judge", judge_script())
    return fake


@pytest.fixture
def presets_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "presets"
    directory.mkdir()
    (directory / "trio.toml").write_text(TRIO)
    return directory


def trio_provider(upstream_url: str) -> ProviderConfig:
    """The fake upstream as the provider of `fake/*`, the `trio` preset's models: a test replacing the providers keeps
    it beside its own, since a preset naming a model no provider serves stops the server at start-up."""
    return ProviderConfig(
        name="fake", base_url=f"{upstream_url}/v1", api_key_env="FAKE_KEY", models=["fake/*"], strip_prefix=True
    )


@pytest.fixture
def make_settings(fake_upstream: tuple[FakeUpstream, str], presets_dir: Path) -> Callable[..., Settings]:
    _, url = fake_upstream

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "providers": [trio_provider(url)],
            "builtin_providers": False,
            "presets_dir": presets_dir,
            "default_preset": "trio",
            "retry": {"initial_backoff_s": 0, "max_backoff_s": 0},
            # Each test its own activity store, never a shared default one.
            "activity": {"path": presets_dir.parent / "activity.sqlite3"},
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> LoopbackNet:
    """Safety net: nothing may connect or resolve beyond loopback, whatever the SSRF guard does (see loopback_net)."""
    net = LoopbackNet()
    net.install(monkeypatch)
    return net


@pytest.fixture
def start_server(make_settings: Callable[..., Settings]) -> Callable[..., AbstractContextManager[str]]:
    """Start openfusion under uvicorn with settings overrides; yields its base URL."""

    @contextmanager
    def start(**overrides: Any) -> Iterator[str]:
        app = create_app(make_settings(**overrides), environ=server_environ())
        with serve_in_thread(app) as url:
            yield url

    return start


class LoopProbe:
    """An ASGI wrapper that remembers the server's event loop, to inspect its tasks from the test thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)

    def task_names(self) -> list[str]:
        """Names of the tasks alive on the server loop right now."""
        assert self.loop is not None

        async def names() -> list[str]:
            return [task.get_name() for task in asyncio.all_tasks()]

        return asyncio.run_coroutine_threadsafe(names(), self.loop).result(timeout=5)


@pytest.fixture
def start_probed_server(make_settings: Callable[..., Settings]) -> Callable[..., AbstractContextManager[Any]]:
    """Like start_server, yielding (url, LoopProbe)."""

    @contextmanager
    def start(**overrides: Any) -> Iterator[tuple[str, LoopProbe]]:
        probe = LoopProbe(create_app(make_settings(**overrides), environ=server_environ()))
        with serve_in_thread(probe) as url:
            yield url, probe

    return start


@pytest.fixture
def server(upstream: FakeUpstream, start_server: Callable[..., AbstractContextManager[str]]) -> Iterator[str]:
    """openfusion with default test settings, against the reset fake upstream."""
    with start_server() as url:
        yield url
