"""Registers the `container` marker here too, so these tests collect before pyproject.toml lists it."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "container: builds and runs the container image with podman (slow CI stage)")
