"""The supervisor of `openfusion serve --workers N`: N worker processes on one port, kept running.

It starts N workers (spawned, not forked: each imports openfusion afresh and builds the app from the same
pickled settings), each with a socket of its own bound to the port with SO_REUSEPORT, on which it serves with
openfusion's own connection protocol. The kernel spreads new connections over the listening sockets by a hash
of their addresses, so a client holding many keep-alive connections gets about as many on every worker; one
socket accepted on by every worker went to whichever woke first, and a burst of connections could land mostly
on one worker for their whole life (167 of 200 in the benchmark). The first workers' sockets listen from the
moment they are bound: a connection hashed to a worker still starting waits in its backlog for it, rather than
every connection a client makes as soon as the server answers going to the worker that was up first, for as
long as it is kept alive. A replacement's socket listens only once it serves, as the others already do. A
worker's socket lives in that worker only: when it dies, new connections go to the others until its
replacement listens. A worker that dies is replaced, at once after a long life, then with a backoff that
doubles up to 30 s while it keeps dying young; if every worker of the first generation fails before serving,
start-up has failed (exit status 3, as with one worker). Workers that keep dying however long they lived (a crash
on every few requests, a dependency gone) are not replaced forever: past `worker_restart_limit` exits per worker
within `worker_restart_window_s`, the supervisor stops the others and exits 5, so that a process manager (systemd,
Kubernetes) restarts the server, and says so, rather than it serving on at a fraction of its capacity unnoticed.
SIGTERM, SIGINT or SIGHUP: the supervisor sends SIGTERM to every worker, and each runs the same grace period as a
single server (`api.shutdown`); it waits for them well past the grace period and kills only a worker still alive
after that. A worker whose supervisor is gone
(killed) shuts down the same way by itself.

Why not uvicorn's own `workers=`: it pickles its Config to each worker, so the app must be an import
string and the connection protocol an importable class without per-server state; it restarts a dead
worker immediately and forever, waits on workers without a bound, and knows nothing of the metrics
files a dead worker leaves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from pydantic import SecretStr

from openfusion.api.shutdown import BACKSTOP_S
from openfusion.observability.metrics_dir import MetricsDirectory
from openfusion.settings import Settings
from openfusion.workers.serve import CANNOT_LISTEN, SHUTDOWN_OVERRUN, STARTUP_FAILURE, WORKERS_DYING, ServeOptions
from openfusion.workers.worker import READY, WorkerSpec, run_worker

log = logging.getLogger("openfusion")

# A worker that lived this long before dying is replaced at once; younger ones wait, 1 s doubling to 30 s.
STABLE_S = 30.0
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
# Past the grace period (and uvicorn's backstop), the time a worker gets to record its requests and close.
STRAGGLER_S = 20.0
# What a first worker's socket queues until it serves: uvicorn's backlog, which the worker then listens with.
BACKLOG = 2048
# SIGHUP too: a closed terminal or a dropped SSH session stops the server as gracefully as SIGTERM.
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass
class _Worker:
    number: int
    process: BaseProcess
    channel: Connection
    started: float = field(default_factory=time.monotonic)
    ready: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid or 0


class Supervisor:
    """N workers of one server, on one port."""

    def __init__(self, settings: Settings, options: ServeOptions, *, count: int) -> None:
        self.settings = settings
        self.options = options
        self.count = count
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}  # by worker number, 1..count
        self._due: dict[int, float] = {}  # worker number -> when to start its replacement
        self._failures: dict[int, int] = {}  # worker number -> young deaths in a row
        self._ever_ready = False
        self._startup_failures = 0
        self._exits: deque[float] = deque()  # when workers died, within the last worker_restart_window_s

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit status (1: cannot listen, 3: no worker could start, 4: a worker had to
        be killed at the end of the shutdown, 5: the workers kept dying)."""
        if self.options.port == 0:  # "any free port": one for all, not one each as every worker binding port 0 gets
            port = _any_free_port(self.options)
            if port is None:
                return CANNOT_LISTEN
            self.options = dataclasses.replace(self.options, port=port)
        if not address_free(self.options):
            return CANNOT_LISTEN
        metrics = MetricsDirectory.create()
        previous = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics.path)  # read by prometheus_client when a worker imports it
        spec = WorkerSpec(shared_secrets(self.settings), self.options, metrics.path)
        try:
            with _SignalPipe() as signals:
                status = self._supervise(spec, metrics, signals)
                killed = self._stop(metrics, signals)
                # A process manager must tell a clean drain from one that cut work off.
                return status or (SHUTDOWN_OVERRUN if killed else 0)
        finally:
            metrics.remove()
            if previous is None:
                os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            else:
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = previous

    def _supervise(self, spec: WorkerSpec, metrics: MetricsDirectory, signals: _SignalPipe) -> int:
        """Start the workers and keep them running until a signal (0), a failed start-up (1, 3), or workers that keep
        dying (5)."""
        for number in range(1, self.count + 1):
            if not self._start(spec, number, listen=True):
                return CANNOT_LISTEN
        log.info("%d workers on %s:%d", self.count, self.options.host, self.options.port)
        while True:
            timeout = max(0.0, min(self._due.values()) - time.monotonic()) if self._due else None
            ready = wait([signals.reader, *self._waitables()], timeout)
            if signals.reader in ready:
                received = signals.read()
                if received:
                    log.info("received %s: stopping %d workers", signal.Signals(received[0]).name, len(self._workers))
                    return 0
            for worker in list(self._workers.values()):
                self._hear(worker)
                if not worker.process.is_alive() and (status := self._exited(worker, metrics)):
                    return status
            now = time.monotonic()
            for number, due in list(self._due.items()):
                if due <= now:
                    del self._due[number]
                    if not self._start(spec, number):  # the port was taken meanwhile: try again later
                        self._due[number] = now + MAX_BACKOFF_S

    def _start(self, spec: WorkerSpec, number: int, *, listen: bool = False) -> bool:
        """Start worker `number` on a socket of its own, listening now if `listen` (the first workers); False
        (logged) when the port cannot be bound."""
        sock = _bind(self.options)
        if sock is None:
            return False
        if listen:
            sock.listen(BACKLOG)
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=run_worker,
            args=(spec,),
            kwargs={"number": number, "sock": sock, "channel": theirs},
            name=f"openfusion-worker-{number}",
            daemon=True,
        )
        process.start()
        theirs.close()  # the worker's end lives in the worker only: when ours closes, it sees the end
        sock.close()  # the worker's only too: when it dies, no connection waits on a socket nobody accepts on
        self._workers[number] = _Worker(number, process, ours)
        log.info("worker %d started (pid %d)", number, process.pid)
        return True

    def _waitables(self) -> list[Any]:
        waitables: list[Any] = []
        for worker in self._workers.values():
            waitables.append(worker.process.sentinel)
            if not worker.ready:
                waitables.append(worker.channel)
        return waitables

    def _hear(self, worker: _Worker) -> None:
        """Read the worker's "ready", if it said it."""
        try:
            while not worker.ready and worker.channel.poll():
                if worker.channel.recv() == READY:
                    worker.ready = self._ever_ready = True
                    log.info("worker %d (pid %d) is serving", worker.number, worker.pid)
        except (EOFError, OSError):
            pass

    def _exited(self, worker: _Worker, metrics: MetricsDirectory) -> int:
        """A worker died on its own: schedule its replacement (0); else the exit status to stop the server with."""
        worker.process.join()
        worker.channel.close()
        del self._workers[worker.number]
        metrics.worker_exited(worker.pid)
        lived = time.monotonic() - worker.started
        if not worker.ready and not self._ever_ready:
            self._startup_failures += 1
            if self._startup_failures >= self.count:
                log.error("no worker could start (the last exited with status %s)", worker.process.exitcode)
                return STARTUP_FAILURE
        if self._dying():
            return WORKERS_DYING
        # Dying young again and again (a crash at start-up, say) must not become a busy loop of restarts.
        streak = 0 if worker.ready and lived >= STABLE_S else self._failures.get(worker.number, 0) + 1
        self._failures[worker.number] = streak
        delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (streak - 1)) if streak else 0.0
        log.warning(
            "worker %d (pid %d) exited with status %s after %.1f s; replacing it in %.1f s",
            worker.number,
            worker.pid,
            worker.process.exitcode,
            lived,
            delay,
        )
        self._due[worker.number] = time.monotonic() + delay
        return 0

    def _dying(self) -> bool:
        """Count one more exit; True (logged) when the workers have died `worker_restart_limit` times each within the
        window: replacing them again would only hide it from whoever restarts the server."""
        limit, window = self.settings.worker_restart_limit, self.settings.worker_restart_window_s
        now = time.monotonic()
        self._exits.append(now)
        while self._exits[0] <= now - window:
            self._exits.popleft()
        if not limit or len(self._exits) < limit * self.count:
            return False
        log.error(
            "workers keep dying: %d exits within %g s (worker_restart_limit = %d for %d workers): stopping the server "
            "for its process manager to restart it",
            len(self._exits),
            window,
            limit,
            self.count,
        )
        return True

    def _stop(self, metrics: MetricsDirectory, signals: _SignalPipe) -> int:
        """SIGTERM to every worker, each then runs its grace period; wait for them, kill what outlives it all (how many
        were killed)."""
        self._due.clear()
        for worker in self._workers.values():
            _signal(worker, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_s + BACKSTOP_S + STRAGGLER_S
        while self._workers and (left := deadline - time.monotonic()) > 0:
            ready = wait([signals.reader, *(w.process.sentinel for w in self._workers.values())], left)
            if signals.reader in ready and signal.SIGINT in signals.read():
                for worker in self._workers.values():  # a second Ctrl-C: stop now, as uvicorn does
                    _signal(worker, signal.SIGINT)
            for worker in [w for w in self._workers.values() if not w.process.is_alive()]:
                self._reap(worker, metrics)
        killed = list(self._workers.values())
        for worker in killed:
            log.error("worker %d (pid %d) still running past the grace period: killed", worker.number, worker.pid)
            worker.process.kill()
            self._reap(worker, metrics)
        log.info("every worker has stopped")
        return len(killed)

    def _reap(self, worker: _Worker, metrics: MetricsDirectory) -> None:
        worker.process.join()
        worker.channel.close()
        metrics.worker_exited(worker.pid)
        del self._workers[worker.number]


def shared_secrets(settings: Settings) -> Settings:
    """The settings every worker gets: with a fingerprint key made here when none is set, so the same wrong key has
    the same fingerprint in every worker's log (it goes to them with the pickled settings, never to the log)."""
    if settings.fingerprint_key is not None:
        return settings
    return settings.model_copy(update={"fingerprint_key": SecretStr(secrets.token_urlsafe(32))})


def _signal(worker: _Worker, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it has just exited
        os.kill(worker.pid, signum)


def address_free(options: ServeOptions) -> bool:
    """Whether the address is free (logged when not): bound once without SO_REUSEPORT, so that another server
    listening there with SO_REUSEPORT (another openfusion, say) is an error, not a share of its traffic."""
    sock = _bind(options, share=False)
    if sock is None:
        return False
    sock.close()
    return True


def _any_free_port(options: ServeOptions) -> int | None:
    """A port free on the host now, for every worker; None (logged) when none can be bound."""
    sock = _bind(options, share=False)
    if sock is None:
        return None
    with sock:
        return int(sock.getsockname()[1])


def _bind(options: ServeOptions, *, share: bool = True) -> socket.socket | None:
    """A worker's own socket, bound with SO_REUSEPORT beside the others' (not listening yet: until it listens,
    the kernel hashes no connection to it); None (logged) when it cannot be."""
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if share:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((options.host, options.port))
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", options.host, options.port, exc)
        sock.close()
        return None
    return sock


class _SignalPipe:
    """SIGTERM, SIGINT and SIGHUP as bytes on a socket, so one `wait` hears signals, worker exits and messages alike."""

    def __enter__(self) -> _SignalPipe:
        self.reader, self._writer = socket.socketpair()
        for end in (self.reader, self._writer):
            end.setblocking(False)
        self._previous = {signum: signal.signal(signum, _ignore) for signum in _SIGNALS}
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        return self

    def read(self) -> list[int]:
        """The signals received since the last read."""
        try:
            return [byte for byte in self.reader.recv(64) if byte in _SIGNALS]
        except BlockingIOError:
            return []

    def __exit__(self, *exc_info: object) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self.reader.close()
        self._writer.close()


def _ignore(signum: int, frame: object) -> None:
    """The handler itself does nothing: the wake-up byte on the socket is what the supervisor reads."""
