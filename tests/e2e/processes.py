"""`openfusion serve` as a real process (one worker or several), for end-to-end tests: start, steer, stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import patch

import httpx
from httpcore import SyncBackend

HI = [{"role": "user", "content": "Hi"}]
_START_S = 60.0  # several workers each import openfusion on a shared 2-core machine
_TICKS = os.sysconf("SC_CLK_TCK")
IDLE_CPU_S = 0.2  # what a server's whole tree may spend over WINDOW_S with no work (an idle one: ~0.01 s)
WINDOW_S = 2.0


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

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @contextmanager
    def only(self, pid: int, pids: dict[int, int]) -> Iterator[None]:
        """Meanwhile every new httpx connection to the server is one the worker `pid` accepted.

        Each worker listens on a socket of its own and the kernel picks one by a hash of a connection's
        addresses: a connection another worker accepted is closed and made again, from another port.
        """
        connect = SyncBackend.connect_tcp
        server_port, workers = self.port, set(pids.values())

        def connect_to_worker(backend: SyncBackend, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
            if port != server_port:
                return connect(backend, host, port, *args, **kwargs)
            for _ in range(100):  # each attempt lands on `pid` with a chance of one in len(pids)
                stream = connect(backend, host, port, *args, **kwargs)
                if accepted_by(stream.get_extra_info("socket"), workers) == pid:
                    return stream
                stream.close()
            raise AssertionError(f"no connection to {port} was accepted by worker {pid}")

        with patch.object(SyncBackend, "connect_tcp", connect_to_worker):
            yield

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
            os.killpg(process.pid, signal.SIGKILL)  # the workers too
        process.wait(timeout=10)


def accepted_by(client: socket.socket, pids: set[int], timeout: float = 10) -> int:
    """The process among `pids` that accepted the client's connection (once it has)."""
    client_port, server_port = client.getsockname()[1], client.getpeername()[1]
    deadline = time.monotonic() + timeout
    while True:
        inodes = tcp_sockets(server_port, state="01", remote_port=client_port)  # 01: established
        for pid in pids:
            if holds(pid, inodes):
                return pid
        assert time.monotonic() < deadline, f"no worker accepted the connection from port {client_port}"
        time.sleep(0.01)


def tcp_sockets(port: int, *, state: str, remote_port: int | None = None) -> set[str]:
    """The inodes of the TCP sockets on local `port` in `state` (/proc/net/tcp's hex code: 0A listen, 01
    established), from `remote_port` if given."""
    inodes = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for line in table.read_text().splitlines()[1:] if table.exists() else []:
            fields = line.split()
            local, remote = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
            if local == port and fields[3] == state and remote_port in (None, remote):
                inodes.add(fields[9])
    return inodes


def holds(pid: int, inodes: set[str]) -> set[str]:
    """Which of these socket inodes the process has open."""
    held = set()
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    held.add(link[8:-1])
    return held


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


def _parents_and_cpu() -> dict[int, tuple[int, float]]:
    """Every process's parent and CPU seconds (user + system), by pid."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS)
    return stats


def _tree(stats: dict[int, tuple[int, float]], root: int) -> set[int]:
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in stats.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    return tree & stats.keys()


def cpu_by_pid(root: int) -> dict[int, float]:
    """CPU seconds (user + system) of `root` and every process descending from it, by pid."""
    stats = _parents_and_cpu()
    return {pid: stats[pid][1] for pid in _tree(stats, root)}


def forked_by_fork_server(root: int) -> dict[int, float]:
    """CPU seconds, by pid, of the processes that the fork server of `root`'s tree (multiprocessing's "forkserver")
    started: the server's extraction workers, and not the fork server itself."""
    stats = _parents_and_cpu()
    fork_servers = set()
    for pid in _tree(stats, root):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            if b"multiprocessing.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes():
                fork_servers.add(pid)
    return {pid: cpu for pid, (ppid, cpu) in stats.items() if ppid in fork_servers}


def watch_cpu(root: int) -> tuple[int, float]:
    """Over WINDOW_S: the process of `root`'s tree that spent the most CPU, and the CPU the whole tree spent."""
    before = cpu_by_pid(root)
    time.sleep(WINDOW_S)
    after = cpu_by_pid(root)
    spent = {pid: cpu - before.get(pid, 0.0) for pid, cpu in after.items()}
    top = max(spent, key=spent.__getitem__)
    return top, sum(spent.values())


def post_and_leave(url: str, body: dict[str, Any], ready: Callable[[], bool], timeout: float = 30.0) -> None:
    """POST `body` to `url` and close the connection once `ready()` holds (the server got that far), before any
    answer: a client that leaves at a known point, not after a fixed time a loaded server may not have got far in."""

    async def run() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            request = asyncio.create_task(client.post(url, json=body))
            deadline = time.monotonic() + timeout
            while not ready():
                assert not request.done(), "answered before the client could leave"
                assert time.monotonic() < deadline, f"not ready within {timeout} s"
                await asyncio.sleep(0.01)
            assert not request.done(), "answered before the client could leave"
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request

    asyncio.run(run())
