"""`openfusion serve` as a real process under attack: a flood of idle connections, an endless header.

A process of its own, as deployed, so its memory and open-file limit are its own to measure and set.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

FLOOD = 1100  # idle connections: more than a default open-file limit of 1,024 allows
SERVER_FILE_LIMIT = 1024  # soft and hard, as under many init systems and container runtimes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def openfusion_serve(tmp_path: Path, *, open_files: int | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`openfusion serve` on a free port (no activity store), optionally under an open-file limit."""
    config = tmp_path / "openfusion.toml"
    config.write_text("[activity]\nenabled = false\n")
    port = _free_port()
    serve = [str(Path(sys.executable).parent / "openfusion"), "serve", "--port", str(port), "--config", str(config)]
    if open_files is not None:  # the limit is set in the child itself, then it becomes the server
        limit = f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({open_files}, {open_files}))"
        serve = [sys.executable, "-c", f"{limit}; os.execv(sys.argv[1], sys.argv[1:])", *serve]
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
            assert process.poll() is None and time.monotonic() < deadline, "openfusion serve did not start"
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        log.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_an_endless_header_does_not_grow_the_server(tmp_path: Path) -> None:
    with openfusion_serve(tmp_path) as (url, process):
        httpx.get(f"{url}/healthz")
        before = rss_kib(process.pid)
        parsed = httpx.URL(url)
        with socket.create_connection((parsed.host, parsed.port or 80), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Endless: ")
            sent, refused = 0, b""
            while sent < 96 * 1024 * 1024:  # the old server kept every byte of it
                try:
                    sock.sendall(b"a" * 65536)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += 65536
            sock.settimeout(2)
            # Reset: refused (the 431 may be lost with it); timeout: still reading the header.
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                refused = sock.recv(65536)
        grown_mib = (rss_kib(process.pid) - before) / 1024
        assert sent < 16 * 1024 * 1024, f"the server read {sent} bytes of one header"
        assert refused == b"" or refused.startswith(b"HTTP/1.1 431")
        assert grown_mib < 16, f"the server grew by {grown_mib:.0f} MiB"
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_a_flood_of_idle_connections_leaves_healthz_answering(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < FLOOD + 256:  # this test's own end of the flood needs the descriptors
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    with openfusion_serve(tmp_path, open_files=SERVER_FILE_LIMIT) as (url, process), ExitStack() as stack:
        parsed = httpx.URL(url)
        for _ in range(FLOOD):
            stack.enter_context(socket.create_connection((parsed.host, parsed.port or 80), timeout=10))
        time.sleep(0.5)
        held = open_files(process.pid)
        for _ in range(3):  # each probe is a new connection, as an orchestrator's would be
            probe = httpx.get(f"{url}/healthz", timeout=10, headers={"Connection": "close"})
            assert probe.status_code == 200 and probe.json()["status"] == "ok"
        assert held < SERVER_FILE_LIMIT - 64, f"the server holds {held} descriptors of {SERVER_FILE_LIMIT}"
    log = (tmp_path / "serve.log").read_text()
    assert "max_connections lowered" in log  # the operator is told why fewer connections are held
