"""Shared fixtures: a clean environment (no provider keys from the shell) for every test."""

from __future__ import annotations

import pytest

from openfusion.upstream.providers import builtin_provider_configs

_KEY_VARS = {c.api_key_env for c in builtin_provider_configs() if c.api_key_env}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No provider key or openfusion setting leaks in from the developer's shell."""
    import os

    for name in list(os.environ):
        if name in _KEY_VARS or name.startswith("OPENFUSION_"):
            monkeypatch.delenv(name, raising=False)
