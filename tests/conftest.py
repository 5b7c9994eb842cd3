"""Shared fixtures: a clean environment (no provider keys from the shell) for every test."""

from __future__ import annotations

import pytest

from openfusion.upstream.providers import builtin_provider_configs

_KEY_VARS = {c.api_key_env for c in builtin_provider_configs() if c.api_key_env}


_SERVICE_VARS = {"DATABASE_URL", "REDIS_URL", "BRAVE_API_KEY", "TAVILY_API_KEY", "EXA_API_KEY"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No provider key, service URL or openfusion setting leaks in from the developer's shell.

    The default activity store (SQLite under $XDG_STATE_HOME) goes to a temporary directory.
    """
    import os

    for name in list(os.environ):
        if name in _KEY_VARS or name in _SERVICE_VARS or name.startswith("OPENFUSION_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.getbasetemp() / "state"))
