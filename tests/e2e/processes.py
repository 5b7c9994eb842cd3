"""`openfusion serve` as a real process (one worker or several), for end-to-end tests: start, steer, stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

HI = [{"role": "user", "content": "Hi"}]
_START_S = 60.0  # several workers each import openfusion on a shared 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def provider_config(upstream_url: str, *, grace_s: float = 5.0, top: str = "", extra: str = "") -> str:
    """A config serving the `trio` preset from the fake upstream; `top` goes before the first table."""
    return (
        f'default_preset = "trio"\nshutdown_grace_s = {grace_s}\n{top}\n'
        f'[[providers]]\nname = "fake"\nbase_url = "{upstream_url}/v1"\nmodels = ["fake/*"]\nstrip_prefix = true\n'
        f"{extra}"
    )


@dataclass
class Served:
    """A running `openfusion serve`: its URL, process and log (JSON lines)."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def serving(self) -> dict[int, int]:
        """Worker number -> pid of the workers that said they serve (the latest of each number)."""
        pids: dict[int, int] = {}
        for line in self.log():
            if line["logger"] == "openfusion" and line["message"].endswith("is serving"):
                words = line["message"].split()  # "worker 2 (pid 1234) is serving"
                pids[int(words[1])] = int(words[3].rstrip(")"))
        return pids

    def wait_serving(
        self, count: int, *, excluding: frozenset[int] = frozenset(), timeout: float = _START_S
    ) -> dict[int, int]:
        """Wait until `count` workers serve, none of them a pid in `excluding`; worker number -> pid."""
        deadline = time.monotonic() + timeout
        while True:
            pids = {n: pid for n, pid in self.serving().items() if pid not in excluding}
            if len(pids) >= count:
                return pids
            assert self.process.poll() is None, f"openfusion serve exited early:\n{self.log_text()}"
            assert time.monotonic() < deadline, f"{count} workers did not start in time:\n{self.log_text()}"
            time.sleep(0.1)

    @contextmanager
    def only(self, pid: int, pids: dict[int, int]) -> Iterator[None]:
        """Only the worker `pid` accepts connections meanwhile: every other one is stopped (SIGSTOP)."""
        others = [other for other in pids.values() if other != pid]
        for other in others:
            os.kill(other, signal.SIGSTOP)
        try:
            yield
        finally:
            for other in others:
                os.kill(other, signal.SIGCONT)

    def finished_by_worker(self) -> dict[int, int]:
        """How many `request finished` lines each worker wrote."""
        counts: dict[int, int] = {}
        for line in self.log():
            if line["message"] == "request finished":
                counts[line["worker"]] = counts.get(line["worker"], 0) + 1
        return counts


@contextmanager
def serve(
    config: str, presets_dir: Path, workdir: Path, *, args: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> Iterator[Served]:
    """Start `openfusion serve` with this config in its own process group; killed (the group) on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "openfusion.toml"
    config_path.write_text(config)
    port = free_port()
    command = [str(Path(sys.executable).parent / "openfusion"), "serve", "--port", str(port), "--config",
               str(config_path), "--presets", str(presets_dir), *args]  # fmt: skip
    log_path = workdir / "serve.log"
    # The log goes to a file: a pipe nobody reads while the server runs would fill and block it.
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
    served = Served(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + _START_S
        while True:
            try:
                if httpx.get(f"{served.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
            assert process.poll() is None, f"openfusion serve exited with {process.returncode}:\n{served.log_text()}"
            assert time.monotonic() < deadline, f"openfusion serve did not start:\n{served.log_text()}"
        yield served
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group outlives its leader while workers remain
            os.killpg(process.pid, signal.SIGKILL)  # the workers too, stopped ones included
        process.wait(timeout=10)


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie nobody reaped yet does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def fusion(
    url: str, *, stream: bool = False, headers: dict[str, str] | None = None, timeout: float = 60
) -> httpx.Response:
    """One fusion request on a new connection (so whichever worker accepts now serves it)."""
    body = {"model": "fusion", "messages": HI, "stream": stream}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=timeout)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        sample_name, _, sample_labels = sample.partition("{")
        if sample_name == name and ",".join(sorted(sample_labels.rstrip("}").split(","))) == wanted:
            return float(value)
    return 0.0
