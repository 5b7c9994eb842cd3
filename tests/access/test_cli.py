"""`openfusion serve` refuses to listen beyond loopback without client keys, unless the operator opts in."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from openfusion.api import shutdown
from openfusion.cli import main

CLIENT_KEY = "sk-client-key-0123456789"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "openfusion.toml"
    path.write_text('builtin_providers = false\ndefault_preset = "quality"\n')
    return path


def test_serve_refuses_to_listen_beyond_loopback_without_client_keys(config: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENFUSION_")}
    result = subprocess.run(
        [sys.executable, "-m", "openfusion", "serve", "--host", "0.0.0.0", "--port", "1", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "refusing to listen on 0.0.0.0 with no client keys" in result.stderr
    assert "OPENFUSION_API_KEYS=" in result.stderr and "OPENFUSION_ALLOW_OPEN=1" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("host", "environ", "warned"),
    [
        ("0.0.0.0", {"OPENFUSION_ALLOW_OPEN": "1"}, True),
        ("127.0.0.1", {}, False),
        ("0.0.0.0", {"OPENFUSION_API_KEYS": CLIENT_KEY}, False),
    ],
)
def test_serve_starts_open_beyond_loopback_only_when_allowed(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    config: Path,
    host: str,
    environ: dict[str, str],
    warned: bool,
) -> None:
    ran: list[dict[str, Any]] = []
    monkeypatch.setattr(shutdown, "run_server", lambda app, **options: ran.append(options) is None)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", "--host", host, "--port", "0", "--config", str(config)]) == 0  # port 0: always free
    assert ran and ran[0]["host"] == host
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "no client keys" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)
