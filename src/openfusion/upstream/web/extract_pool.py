"""HTML and PDF extraction in worker processes that are killed past their time, CPU or memory limit.

A parser on a hostile document can run for minutes (a small PDF whose pages all draw one huge content
stream). A thread cannot be stopped, so the work runs in a process of its own: past `extract_timeout_s`,
or when the request that wanted it is cancelled, the process is killed and a fresh one takes its place.
In the worker, RLIMIT_AS caps its memory and RLIMIT_CPU ends it should nobody be left to kill it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import resource
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from openfusion.upstream.web.config import FetchConfig
from openfusion.upstream.web.errors import FetchFailed
from openfusion.upstream.web.extract import ContentKind, Extracted, extract

logger = logging.getLogger(__name__)

# Workers are forked from a fork server that imported these once: a fresh worker is ready in milliseconds,
# and none is forked from the threaded server itself. "__main__" too, or every worker would run the main
# script again (multiprocessing's main-module fix-up).
_PRELOAD = ["__main__", "openfusion.upstream.web.extract_pool", "pypdf", "trafilatura"]
_NAMES: dict[ContentKind, str] = {"html": "page", "pdf": "PDF", "text": "text", "json": "JSON document"}


@dataclass(frozen=True)
class ExtractLimits:
    """What one extraction may use: wall time, CPU time (the backstop), address space, PDF pages."""

    timeout_s: float
    cpu_s: int
    memory_bytes: int
    max_pages: int

    @classmethod
    def from_config(cls, config: FetchConfig) -> ExtractLimits:
        """The limits of a `[research.fetch]` table."""
        return cls(
            timeout_s=config.extract_timeout_s,
            cpu_s=math.ceil(config.extract_timeout_s) + 1,
            memory_bytes=config.extract_memory_mb * 1024 * 1024,
            max_pages=config.max_pdf_pages,
        )


@dataclass(frozen=True)
class _Job:
    kind: ContentKind
    body: bytes
    charset: str | None
    url: str
    max_chars: int
    max_pages: int
    cpu_s: int


class _Worker:
    """One extraction process and the parent's end of its pipe."""

    def __init__(self, process: BaseProcess, connection: Connection) -> None:
        self.process = process
        self.connection = connection

    def call(self, job: _Job) -> Extracted | FetchFailed:
        """Send a job and wait for its outcome (blocking: run it in a thread)."""
        self.connection.send(job)
        outcome: Extracted | FetchFailed = self.connection.recv()
        return outcome

    def kill(self) -> None:
        """End the process at once (SIGKILL: a parser deep in C code does not see SIGTERM in time)."""
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        self.connection.close()


class ExtractionPool:
    """Up to `workers` extraction processes, started on first use, each reused until it must be killed."""

    def __init__(self, limits: ExtractLimits, *, workers: int = 2) -> None:
        self.limits = limits
        self._size = workers
        self._slots = asyncio.Semaphore(workers)
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._starting: set[asyncio.Future[_Worker]] = set()  # workers started for extractions since cancelled
        self._closed = False

    @classmethod
    def from_config(cls, config: FetchConfig) -> ExtractionPool:
        """A pool with the limits and size of a `[research.fetch]` table."""
        return cls(ExtractLimits.from_config(config), workers=config.extract_workers)

    async def extract(
        self, kind: ContentKind, body: bytes, *, charset: str | None, url: str, max_chars: int
    ) -> Extracted:
        """The readable text of `body`, extracted in a worker; FetchFailed when it was cut or failed."""
        if self._closed:
            raise FetchFailed("the server is shutting down.")
        limits = self.limits
        job = _Job(kind, body, charset, url, max_chars, limits.max_pages, limits.cpu_s)
        async with self._slots:
            worker = await self._worker()
            self._busy.add(worker)
            try:
                async with asyncio.timeout(limits.timeout_s):
                    outcome = await asyncio.to_thread(worker.call, job)
            except TimeoutError:
                worker.kill()
                logger.info("extraction of %s cut after %g s", url, limits.timeout_s)
                raise FetchFailed(
                    f"text extraction was cut off after {limits.timeout_s:g} s: the {_NAMES[kind]} is too costly "
                    "to read."
                ) from None
            except (EOFError, OSError):  # the worker died: over its CPU or memory limit, or a parser crashed
                worker.kill()
                logger.info("extraction of %s cut: its worker ended (exit code %s)", url, worker.process.exitcode)
                raise FetchFailed(
                    f"text extraction was cut off: the {_NAMES[kind]} needed more CPU or memory than allowed."
                ) from None
            except BaseException:  # cancelled with its request (or the fetch's own deadline)
                worker.kill()
                raise
            finally:
                self._busy.discard(worker)
            if self._closed:
                worker.kill()
            else:
                self._idle.append(worker)
        if isinstance(outcome, FetchFailed):
            raise outcome
        return outcome

    async def _worker(self) -> _Worker:
        while self._idle:
            worker = self._idle.pop()
            if worker.process.is_alive():
                return worker
            worker.kill()
        # Starting the first one may start the fork server (it imports the parsers): not on the event loop.
        starting = asyncio.ensure_future(asyncio.to_thread(_start_worker, self.limits.memory_bytes))
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            # The thread goes on starting it whatever happens here: the pool takes the worker in when it is up.
            self._starting.add(starting)
            starting.add_done_callback(self._take_in)
            raise

    def _take_in(self, starting: asyncio.Future[_Worker]) -> None:
        """Keep a worker started for an extraction cancelled meanwhile for the next one, if the pool has room."""
        self._starting.discard(starting)
        if starting.cancelled() or starting.exception() is not None:
            return
        worker = starting.result()
        if self._closed or len(self._idle) + len(self._busy) >= self._size:
            worker.kill()
        else:
            self._idle.append(worker)

    async def aclose(self) -> None:
        """Kill every worker, busy ones included (their extractions fail)."""
        self._closed = True
        for worker in [*self._idle, *self._busy]:
            worker.kill()
        self._idle.clear()


def _start_worker(memory_bytes: int) -> _Worker:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)  # only has an effect before the fork server starts
    ours, theirs = context.Pipe(duplex=True)
    process = context.Process(target=_serve, args=(theirs, memory_bytes), name="openfusion-extract", daemon=True)
    process.start()
    theirs.close()  # the worker's end lives in the worker only: its death is our EOF
    return _Worker(process, ours)


def _serve(connection: Connection, memory_bytes: int) -> None:
    """The worker's loop: one job at a time until the server closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the server decides
    _limit(resource.RLIMIT_AS, memory_bytes)
    while True:
        try:
            job: _Job = connection.recv()
        except (EOFError, OSError):
            return
        connection.send(_run(job))


def _run(job: _Job) -> Extracted | FetchFailed:
    used = resource.getrusage(resource.RUSAGE_SELF)
    # RLIMIT_CPU counts the process's whole life: this job gets cpu_s more than what is spent so far.
    _limit(resource.RLIMIT_CPU, math.ceil(used.ru_utime + used.ru_stime) + job.cpu_s)
    try:
        return extract(job.kind, job.body, charset=job.charset, url=job.url, max_chars=job.max_chars,
                       max_pages=job.max_pages)  # fmt: skip
    except FetchFailed as exc:
        return exc
    except MemoryError:
        return FetchFailed(f"text extraction was cut off: the {_NAMES[job.kind]} needed more memory than allowed.")


def _limit(which: int, soft: int) -> None:
    """Lower a resource's soft limit (never above the hard limit, which stays as it is)."""
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(which, (soft, hard))
