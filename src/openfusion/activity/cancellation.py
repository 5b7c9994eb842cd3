"""Database calls that end when cancelled, even when PostgreSQL does not answer.

psycopg answers a first cancellation (an `asyncio.timeout` that passed, a client that left) by asking the
server to cancel the query and waiting for it: about 10 s more when a network partition drops every packet.
Cancelled again meanwhile, it closes the connection at once. `ends_when_cancelled` runs each call in a task
of its own and, once its caller is cancelled, cancels that task again and again until it ends: the caller's
time limit holds to within `CANCEL_EVERY_S` or so, and the pool replaces the closed connection.

The re-cancelling is bounded by a number of cancellations, not by wall time: on a loaded machine (or behind a
coroutine that holds the event loop) one wait can outlast any time budget, and a budget spent before the second
cancellation would leave the call with only the first, which psycopg answers by waiting for the server.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

log = logging.getLogger("openfusion.activity")

P = ParamSpec("P")
T = TypeVar("T")

# How often a task that goes on after being cancelled is cancelled again, and how many times at most (about a
# second in all on an idle machine).
CANCEL_EVERY_S = 0.1
CANCEL_TIMES = 10


async def cancel_until_done(
    task: asyncio.Future[Any], *, every_s: float = CANCEL_EVERY_S, times: int = CANCEL_TIMES
) -> bool:
    """Cancel `task`, and again every `every_s` until it ends, `times` times at most; whether it ended.

    Each cancellation reaches the task before the next is made (its wake-up is scheduled at once, the wait's
    timer after it), so however late the waits end on a loaded machine, the task sees all `times` of them.
    Cancelled itself meanwhile (a caller cancelled twice: its client left, then the shutdown's grace period
    ended), it goes on cancelling the task all the same, then raises CancelledError: it would otherwise leave
    the task with its first cancellation only.
    """
    interrupted = False
    for _ in range(times):
        if task.done():
            break
        task.cancel()
        try:
            await asyncio.wait([task], timeout=every_s)
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError
    return task.done()


def ends_when_cancelled(call: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """The database call `call`, ending within a fraction of a second of being cancelled (see the module)."""

    @functools.wraps(call)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        task = asyncio.get_running_loop().create_task(call(*args, **kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_retrieve_outcome)
            if not await cancel_until_done(task):
                log.warning("an activity database call went on after being cancelled; left to end by itself")
            raise

    return run


def _retrieve_outcome(task: asyncio.Future[Any]) -> None:
    """Retrieve a cancelled call's outcome, so that an error it ended with is not reported as never retrieved."""
    if not task.cancelled():
        task.exception()
