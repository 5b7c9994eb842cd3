"""Access-control fixtures: openfusion apps with keys and limits under real uvicorn, a fake upstream, real Redis."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import FastAPI

from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, Script
from openfusion.access.config import AccessConfig
from openfusion.app import create_app
from openfusion.settings import ProviderConfig, Settings

from .private_redis import PrivateRedis

REDIS_URL = "redis://127.0.0.1:6379/0"
ACCESS_FIELDS = set(AccessConfig.model_fields)

ANALYSIS = {
    "consensus": ["ok"],
    "contradictions": [],
    "partial_coverage": [],
    "unique_insights": [],
    "blind_spots": [],
}
PRESETS = {
    "trio": 'analysis_models = ["fake/a", "fake/b", "fake/c"]\nmodel = "fake/judge"\nsynthesis_model = "fake/synth"\n',
    "duo": 'analysis_models = ["fake/a", "fake/b"]\nmodel = "fake/judge"\n',
}


@pytest.fixture
def upstream(fake_upstream: tuple[FakeUpstream, str]) -> FakeUpstream:
    """The fake upstream, reset, with a valid judge."""
    fake, _ = fake_upstream
    fake.reset()
    fake.script("judge", Script(content=json.dumps(ANALYSIS)))
    return fake


@pytest.fixture
def presets_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "presets"
    directory.mkdir()
    for name, text in PRESETS.items():
        (directory / f"{name}.toml").write_text(text)
    return directory


@pytest.fixture
def core_settings(fake_upstream: tuple[FakeUpstream, str], presets_dir: Path) -> dict[str, Any]:
    """Settings of a server whose only provider is the fake upstream (`fake/*`)."""
    _, url = fake_upstream
    return {
        "providers": [
            ProviderConfig(
                name="fake", base_url=f"{url}/v1", api_key_env="FAKE_KEY", models=["fake/*"], strip_prefix=True
            )
        ],
        "builtin_providers": False,
        "presets_dir": presets_dir,
        "default_preset": "trio",
        "retry": {"max_attempts": 1},
        "activity": {"enabled": False},  # access tests; the spend cap with a store has its own test
    }


def build_app(
    core: dict[str, Any], access: dict[str, Any] | None = None, *, environ: dict[str, str] | None = None
) -> FastAPI:
    """create_app with access settings (`api_keys`, `keys`, `limits`, `guards`, `cors`, `redis_url`)."""
    environ = {"FAKE_KEY": "sk-provider-secret", **(environ or {})}
    access = access or {}
    assert set(access) <= ACCESS_FIELDS, set(access) - ACCESS_FIELDS
    return create_app(Settings(**core, **access), environ=environ)


@pytest.fixture
def serve(
    upstream: FakeUpstream, core_settings: dict[str, Any]
) -> Callable[..., AbstractContextManager[tuple[str, FastAPI]]]:
    """Start openfusion with access settings under uvicorn; yields (base URL, app)."""

    @contextlib.contextmanager
    def start(
        access: dict[str, Any] | None = None, *, environ: dict[str, str] | None = None, **core: Any
    ) -> Iterator[tuple[str, FastAPI]]:
        app = build_app({**core_settings, **core}, access, environ=environ)
        with serve_in_thread(app) as url:
            yield url, app

    return start


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """A plain client to look at the counters."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    yield client
    client.close()


def fake_prices(per_token: float = 1e-12, *, max_completion_tokens: int = 1000) -> dict[str, Any]:
    """`pricing` for every fake model: a spend cap needs a bounded worst case before it admits a request."""
    price = {"prompt": per_token, "completion": per_token, "max_completion_tokens": max_completion_tokens}
    models = ("a", "b", "c", "judge", "synth", "outer")
    return {"models": {f"fake/{model}": price for model in models}}


def chat_body(model: str = "fusion/trio", *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    """A minimal chat request."""
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "Hi"}], **extra}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis server of this test's own (stopped afterwards), for faults the shared one must not see."""
    server = PrivateRedis(tmp_path)
    try:
        yield server
    finally:
        server.stop()
