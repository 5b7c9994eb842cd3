"""A Redis server of one test's own, to stop, restart empty or pause: faults the shared one must never see."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """`redis-server` on a free loopback port, without persistence: a restart starts it empty."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed for the limit store's fault tests (apt-get install redis-server)"
        self._binary = binary
        self._directory = directory
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None
        self.start()

    def client(self) -> redis.Redis:
        """A plain client, to look at the counters or pause the server."""
        return redis.Redis.from_url(self.url, socket_connect_timeout=2)

    def start(self) -> None:
        command = [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._process = subprocess.Popen(
            [*command, "--dir", str(self._directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        with self.client() as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.ConnectionError:
                    assert time.monotonic() < deadline, "redis-server did not start within 10 s"
                    time.sleep(0.05)

    def stop(self) -> None:
        """Kill it (no shutdown of its own: its data is gone, as with a crash)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None

    def freeze(self) -> None:
        """Stop it answering, connections open (SIGSTOP): as a partition that drops packets looks to a client."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def restart_empty(self) -> None:
        self.stop()
        self.start()
