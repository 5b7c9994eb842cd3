"""`openfusion local` with real llama.cpp servers: a server that fails names its log; the temporary directory
(config, logs, activity store) is removed on exit unless kept."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

OPENFUSION = str(Path(sys.executable).parent / "openfusion")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_llama_server_that_fails_to_start_is_named_with_its_log(tmp_path: Path) -> None:
    model = tmp_path / "broken.gguf"
    model.write_bytes(b"this is not a GGUF file")
    workdir = tmp_path / "work"
    result = subprocess.run(
        [OPENFUSION, "local", "--panel", "1", "--port", str(_free_port()), "--workdir", str(workdir),
         "--model", str(model)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    log = workdir / "llama-1.log"
    assert "exited with status" in result.stderr and f"its log is {log}" in result.stderr, result.stderr
    assert log.is_file() and "Traceback" not in result.stderr.split("its log is")[0]


def _run_until_serving(*args: str, tmp_path: Path) -> tuple[str, Path]:
    """Start `openfusion local` in a fresh TMPDIR, wait until it serves, stop it with SIGTERM; (output, its dir)."""
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    command = [OPENFUSION, "local", "--panel", "1", "--port", str(port), *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "openfusion local did not start"
            time.sleep(0.5)
        [workdir] = tmp_path.glob("openfusion-local-*")
        assert (workdir / "openfusion.toml").is_file() and (workdir / "activity.sqlite3").is_file()
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
    return output, workdir


def test_its_temporary_directory_is_removed_on_exit(tmp_path: Path) -> None:
    output, workdir = _run_until_serving(tmp_path=tmp_path)
    assert not workdir.exists(), output
    assert "Traceback" not in output


def test_its_temporary_directory_is_kept_with_keep(tmp_path: Path) -> None:
    output, workdir = _run_until_serving("--keep", tmp_path=tmp_path)
    assert (workdir / "activity.sqlite3").is_file() and (workdir / "llama-1.log").is_file()
    assert f"kept {workdir}" in output
