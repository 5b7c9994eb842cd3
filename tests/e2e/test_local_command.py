"""`openfusion local` refuses what it cannot do with a message, before starting anything (no traceback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from openfusion.localdemo.config import ACTIVITY_FILE, write_config
from openfusion.localdemo.servers import LlamaServer
from openfusion.settings import load_settings

OPENFUSION = str(Path(sys.executable).parent / "openfusion")


def local(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    return subprocess.run(
        [OPENFUSION, "local", *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def test_a_busy_port_is_refused_before_any_server_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = local("--port", str(port), "--workdir", str(tmp_path / "work"), tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "work").exists(), "checked before anything was made"
    assert not list(tmp_path.glob("openfusion-local-*"))


def test_an_address_beyond_loopback_without_client_keys_is_refused_before_any_server_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENFUSION_API_KEYS", raising=False)
    monkeypatch.delenv("OPENFUSION_ALLOW_OPEN", raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    result = local("--host", "0.0.0.0", "--port", str(port), "--workdir", str(tmp_path / "work"), tmp_path=tmp_path)

    assert result.returncode == 2, result.stderr
    assert "refusing to listen on 0.0.0.0 with no client keys" in result.stderr
    assert "OPENFUSION_API_KEYS" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "work").exists(), "refused before anything was made or started"


def test_a_missing_workdir_is_created(tmp_path: Path) -> None:
    workdir = tmp_path / "new" / "work"
    # A model file that does not exist: the command stops right after making the work directory.
    result = local("--port", "0", "--workdir", str(workdir), "--model", str(tmp_path / "none.gguf"), tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("openfusion local: ") and "Traceback" not in result.stderr
    assert workdir.is_dir()


def test_a_workdir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "work"
    file.write_text("not a directory")
    result = local("--port", "0", "--workdir", str(file), tmp_path=tmp_path)
    assert result.returncode == 2
    assert f"--workdir {file} exists and is not a directory" in result.stderr and "Traceback" not in result.stderr


def test_the_demo_keeps_its_activity_store_in_its_work_directory(tmp_path: Path) -> None:
    servers = [LlamaServer(port, None) for port in (18001, 18002)]  # type: ignore[arg-type]  # not started
    config, presets = write_config(servers, tmp_path / 'dir with "quotes" and spaces')
    settings = load_settings(config, presets_dir=presets)
    assert settings.activity.path == (tmp_path / 'dir with "quotes" and spaces' / ACTIVITY_FILE).resolve()
    assert tomllib.loads(config.read_text())["default_preset"] == "local"


def test_a_port_beyond_65535_is_a_usage_error(tmp_path: Path) -> None:
    result = local("--port", "70000", "--workdir", str(tmp_path / "work"), tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "argument --port: expected a port number from 0 to 65535, not '70000'" in result.stderr
    assert not (tmp_path / "work").exists(), "refused before anything was made"
