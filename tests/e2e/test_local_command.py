"""`openfusion local` refuses what it cannot do with a message, before starting anything (no traceback)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
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


# Stands in for llama-cpp-python's server (`python -m llama_cpp.server --port N ...`): answers /v1/models, and writes
# its pid where the test finds it.
_FAKE_LLAMA_SERVER = """
import http.server, os, sys
from pathlib import Path

class Models(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"object": "list", "data": [{"id": "smollm2", "object": "model"}]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

port = int(sys.argv[sys.argv.index("--port") + 1])
Path(os.environ["FAKE_LLAMA_PIDS"], str(os.getpid())).touch()
http.server.HTTPServer(("127.0.0.1", port), Models).serve_forever()
"""


def _process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_the_model_servers_end_with_a_killed_local_command(tmp_path: Path) -> None:
    """SIGKILL to `openfusion local` (no handler, no `finally`): its llama.cpp servers used to run on, orphaned; the
    kernel now ends them with it."""
    fake = tmp_path / "fake"
    (fake / "llama_cpp").mkdir(parents=True)
    (fake / "llama_cpp" / "__init__.py").write_text("")
    (fake / "llama_cpp" / "server.py").write_text(_FAKE_LLAMA_SERVER)
    pids_dir, model = tmp_path / "pids", tmp_path / "model.gguf"
    pids_dir.mkdir()
    model.write_bytes(b"GGUF")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(fake), "FAKE_LLAMA_PIDS": str(pids_dir)}
    command = [OPENFUSION, "local", "--panel", "2", "--port", str(port), "--workdir", str(tmp_path / "work"),
               "--model", str(model)]  # fmt: skip
    log = tmp_path / "local.log"
    with log.open("wb") as output:  # a file: a pipe nobody reads while it runs could fill and block it
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while True:  # the servers are up and openfusion serves in front of them
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "openfusion local did not start"
            time.sleep(0.2)
        pids = [int(path.name) for path in pids_dir.iterdir()]
        assert len(pids) == 2 and all(_process_alive(pid) for pid in pids)
        process.kill()
        process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_process_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in pids if _process_alive(pid)], "model servers outlived the killed command"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
