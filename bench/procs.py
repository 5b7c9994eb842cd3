"""Processes under test: start, wait until ready, stop; their CPU time and memory from /proc."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """A free TCP port on loopback (bind 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def raise_fd_limit() -> None:
    """1000 in-flight streams need more than the common 1024 descriptors (proxy, fake and client)."""
    with contextlib.suppress(ValueError, OSError):
        _raise_fd_limit()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def tree(pid: int) -> list[int]:
    """The pid and all its live descendants."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(_children(current))
    return out


def cpu_snapshot(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of a process tree, two ways, for `cpu_delta`.

    `<pid>/<tid>` keys: each live thread's time on a CPU from its schedstat, in nanoseconds.
    `<pid>` keys: the process's utime + stime from stat, in clock ticks (10 ms) but counting threads
    that have exited too (a thread-per-request server such as Flask's loses them from schedstat).
    """
    out: dict[str, float] = {}
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            out[str(p)] = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime: fields 14 and 15
            tids = os.listdir(f"/proc/{p}/task")
        except (OSError, IndexError, ValueError):
            continue
        for tid in tids:
            try:
                out[f"{p}/{tid}"] = int(Path(f"/proc/{p}/task/{tid}/schedstat").read_text().split()[0]) / 1e9
            except (OSError, ValueError, IndexError):
                continue
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> float:
    """CPU seconds between two snapshots.

    The per-thread nanosecond sum is exact while threads live; a thread that exits takes its time
    with it (and a delta keyed per thread never goes negative). When the tick-based process total
    grew by more than its own rounding (two ticks per process), threads died: use that total.
    """
    threads = sum(v - before.get(k, 0.0) for k, v in after.items() if "/" in k)
    procs = [k for k in after if "/" not in k]
    ticks = sum(after[k] - before.get(k, 0.0) for k in procs)
    slack = 2 * len(procs) / _TICK
    return ticks if ticks > threads + slack else threads


def cpu_seconds(pid: int) -> float:
    """Total CPU seconds of a process tree (for one-off readings)."""
    return sum(v for k, v in cpu_snapshot(pid).items() if "/" not in k)


def connections_by_pid(pid: int, port: int) -> dict[int, int]:
    """Established TCP connections on local `port` that each process of a tree holds (who accepted what)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 01: ESTABLISHED
                inodes.add(fields[9])
    out: dict[int, int] = {}
    for p in tree(pid):
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        held = 0
        for fd in fds:
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{p}/fd/{fd}")
                held += link.startswith("socket:[") and link[8:-1] in inodes
        if held:
            out[p] = held
    return out


def rss_bytes(pid: int) -> int:
    """Resident set size of a process and its live descendants."""
    total = 0
    for p in tree(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * _PAGE
        except OSError:
            continue
    return total


def open_files(pid: int) -> int:
    """File descriptors a process and its live descendants hold open (sockets among them)."""
    total = 0
    for p in tree(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            continue
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (from /proc/stat), for load accounting."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Service:
    """A server process started by the harness (its own process group, so it stops with its children)."""

    name: str
    argv: list[str]
    port: int
    ready_path: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path = Path("/tmp")
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self) -> Service:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_raise_fd_limit,
            )
        self.started_s = time.monotonic()
        return self

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Poll until the server answers any HTTP status on `ready_path`; seconds it took since start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as response:
                    response.read()
                return time.monotonic() - self.started_s
            except urllib.error.HTTPError:
                return time.monotonic() - self.started_s
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; see {self.log}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu(self) -> dict[str, float]:
        return cpu_snapshot(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def open_files(self) -> int:
        return open_files(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the service's own process group, SIGKILL it if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
