"""`openfusion serve` warns when it would listen beyond loopback without client keys."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from openfusion.api import shutdown
from openfusion.cli import main


@pytest.mark.parametrize(
    ("host", "keys", "warned"),
    [("0.0.0.0", None, True), ("127.0.0.1", None, False), ("0.0.0.0", "sk-x-4f9a2c7e1d3b5a", False)],
)
def test_serve_warns_when_open_beyond_loopback(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    host: str,
    keys: str | None,
    warned: bool,
) -> None:
    ran: list[dict[str, Any]] = []
    monkeypatch.setattr(shutdown, "run_server", lambda app, **options: ran.append(options) is None)
    if keys:
        monkeypatch.setenv("OPENFUSION_API_KEYS", keys)
    config = tmp_path / "openfusion.toml"
    config.write_text('builtin_providers = false\ndefault_preset = "quality"\n')
    assert main(["serve", "--host", host, "--config", str(config)]) == 0
    assert ran and ran[0]["host"] == host
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "no client keys" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)
