"""Graceful shutdown: in-flight requests get the grace period, then end with an error their client can read.

uvicorn's own grace period ends by cancelling every request task: a stream is cut without a word, a
plain request gets a text/plain 500, and the activity writer is already closing when the cancelled
requests record themselves. Here the grace period is ours: when it ends, each request still running
is cancelled where it waits (the upstream call), and turns that into a `server_shutting_down` error
— an error chunk and `[DONE]` in a stream, an OpenAI-shaped 503 otherwise — recorded like any other.
uvicorn's cancellation stays as a backstop a little later, and the app's lifespan waits for every
request's record before it closes the activity writer. What the backstop cancels is told in one warning line per
request (`ShutdownLog`), not as uvicorn's "Exception in ASGI application" with a traceback, read as a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from openfusion.errors import ServerShuttingDown

log = logging.getLogger("openfusion")

# uvicorn cancels what is still running this long after our grace period ended (a client that
# stopped reading can hold its response's last write forever).
BACKSTOP_S = 2.0
# Once the requests are over, the most the activity writer's last flush may go without writing a record: a
# store that does not answer (a network partition drops packets, it refuses nothing) must not hold the stop,
# while a backlog a working store takes in is written whole. With the backstop and the database pool's close
# (`postgres_store.CLOSE_TIMEOUT_S`), a stop with a store that does not answer ends within the grace period + 5 s.
ACTIVITY_FLUSH_S = 2.0


class Drain:
    """The requests in flight, and the end of the grace period that stops those still running."""

    def __init__(self) -> None:
        self.stopping = False
        self._watched: set[asyncio.Task[Any]] = set()
        self._stopped: set[asyncio.Task[Any]] = set()
        self._waits: set[asyncio.Future[bool]] = set()  # see cut_short()
        self._open = 0  # requests whose record is not written yet
        self._idle: asyncio.Event | None = None

    def begin(self, grace_s: float) -> None:
        """Shutdown started: stop whatever is still running once `grace_s` seconds have passed."""
        asyncio.get_running_loop().call_later(grace_s, self.stop)

    def stop(self) -> None:
        """End the grace period: every request in flight ends with `server_shutting_down`."""
        if not self.stopping:
            self.stopping = True
            if self._watched:
                log.warning("grace period over: ending %d request(s) in flight", len(self._watched))
        for task in list(self._watched):
            self._stop(task)
        for waiter in list(self._waits):
            self._cut(waiter)

    def watch(self, task: asyncio.Task[Any]) -> None:
        """Cancel `task` when the grace period ends (at once if it already has)."""
        self._watched.add(task)
        if self.stopping:
            self._stop(task)

    def cut_short(self, waiter: asyncio.Future[bool]) -> None:
        """End `waiter` with False when the grace period ends (at once if it already has), unless done by then.

        A response waiting for its record (`record_before_end`) ends then: its answer is whole, and the record
        is the activity writer's to write, or to count as lost, when it closes.
        """
        if self.stopping:
            self._cut(waiter)
        elif not waiter.done():
            self._waits.add(waiter)
            waiter.add_done_callback(self._waits.discard)

    @staticmethod
    def _cut(waiter: asyncio.Future[bool]) -> None:
        if not waiter.done():
            waiter.set_result(False)

    def unwatch(self, task: asyncio.Task[Any]) -> None:
        self._watched.discard(task)
        self._stopped.discard(task)

    def stopped(self, task: asyncio.Task[Any]) -> bool:
        """Whether the end of the grace period (and nothing else) cancelled `task`."""
        return task in self._stopped and task.cancelling() <= 1

    def _stop(self, task: asyncio.Task[Any]) -> None:
        if task not in self._stopped and not task.done():
            self._stopped.add(task)
            task.cancel("server shutting down")

    def in_flight(self) -> int:
        """The requests begun whose record is not handed over yet."""
        return self._open

    def opened(self) -> None:
        """A request began: its record is owed."""
        self._open += 1

    def closed(self) -> None:
        """A request's record was handed to the activity writer."""
        self._open -= 1
        if self._open == 0 and self._idle is not None:
            self._idle.set()

    async def wait_closed(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) until every request has recorded itself, cancelled ones included."""
        if self._open == 0:
            return
        self._idle = asyncio.Event()
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            log.warning("%d request(s) still unrecorded at shutdown", self._open)


class ShutdownLog(logging.Filter):
    """On uvicorn's logger: a request the shutdown ended is told in one warning line, not as a crash.

    uvicorn logs every request task it cancels at the end of its shutdown (`BACKSTOP_S`) as "Exception in ASGI
    application", at ERROR with the CancelledError's traceback, and the cancelling itself at ERROR too; and a stream
    the grace period's end cut while its client read no more (its body closed, its last bytes never sent) as "ASGI
    callable returned without completing response", at ERROR. Each is this server's design once the grace period is
    over: a warning. Only a CancelledError of a request uvicorn is cancelling (its task has a cancellation under
    way) is told so; any other exception keeps its traceback.
    """

    def __init__(self, drain: Drain) -> None:
        super().__init__()
        self.drain = drain

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.drain.stopping:
            return True
        if record.msg == _BACKSTOP_CANCELS:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            return True
        if record.msg == _CUT_SHORT:
            log.warning("response cut short at shutdown: its client was not reading when the grace period ended")
            return False
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, asyncio.CancelledError) and _being_cancelled():
            log.warning("request cancelled at shutdown: still running %g s after the grace period ended", BACKSTOP_S)
            return False
        return True


# uvicorn's words
_BACKSTOP_CANCELS = "Cancel %s running task(s), timeout graceful shutdown exceeded"
_CUT_SHORT = "ASGI callable returned without completing response."


def _being_cancelled() -> bool:
    """Whether the current task (the request uvicorn reports on) has a cancellation under way."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop: not a request's report
        return False
    return task is not None and task.cancelling() > 0


def shutting_down() -> ServerShuttingDown:
    """The error of a request the end of the grace period stopped."""
    return ServerShuttingDown("The server is shutting down; the request was stopped. Retry it.")


@contextlib.contextmanager
def _signal_handler(signum: int, handler: Callable[[int, Any], None]) -> Iterator[None]:
    """`handler` for `signum` meanwhile (only the main thread may set one: elsewhere, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def run_server(
    app: Any,
    *,
    drain: Drain,
    grace_s: float,
    sockets: list[socket.socket] | None = None,
    on_started: Callable[[], None] | None = None,
    **options: Any,
) -> bool:
    """Serve `app` with uvicorn until SIGTERM/SIGINT/SIGHUP, with our grace period; False when it could not start.

    `sockets`: listen on these (a worker of several, on its supervisor's socket) instead of binding.
    `on_started` is called once the app's lifespan has started and the server listens.
    """
    import uvicorn

    from openfusion.api.startup import StartupFailure

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started and on_started is not None:
                on_started()

        async def shutdown(self, sockets: Any = None) -> None:
            drain.begin(grace_s)  # uvicorn has just stopped listening; in-flight requests get grace_s
            await super().shutdown(sockets)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn raises the signal that stopped it again once it is done, so the process ends killed by
            # SIGTERM (status -15, or 143 in a shell) after a clean drain; here a clean stop exits 0, as with
            # several workers (whose supervisor reports an overrun as 4).
            # SIGHUP (the terminal closed, the SSH session dropped) stops it as SIGTERM does: its default would end the
            # process at once, cutting every request and losing the activity records not yet written.
            with super().capture_signals(), _signal_handler(signal.SIGHUP, self.handle_exit):
                try:
                    yield
                finally:
                    getattr(self, "_captured_signals", []).clear()

    config = uvicorn.Config(StartupFailure(app), timeout_graceful_shutdown=grace_s + BACKSTOP_S, **options)
    server = Server(config)
    uvicorn_log, shutdown_log = logging.getLogger("uvicorn.error"), ShutdownLog(drain)
    uvicorn_log.addFilter(shutdown_log)  # (after Config, which configures uvicorn's loggers)
    try:
        server.run(sockets)
    finally:
        uvicorn_log.removeFilter(shutdown_log)
    return bool(server.started)
