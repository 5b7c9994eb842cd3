"""Database calls that end when cancelled, even when PostgreSQL does not answer.

psycopg answers a first cancellation (an `asyncio.timeout` that passed, a client that left) by asking the
server to cancel the query and waiting for it: about 10 s more when a network partition drops every packet.
Cancelled again meanwhile, it closes the connection at once. `ends_when_cancelled` runs each call in a task
of its own and, once its caller is cancelled, cancels that task again and again until it ends: the caller's
time limit holds to within `CANCEL_EVERY_S` or so, and the pool replaces the closed connection.
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

# How often a task that goes on after being cancelled is cancelled again, and for how long at most.
CANCEL_EVERY_S = 0.1
CANCEL_FOR_S = 1.0


async def cancel_until_done(
    task: asyncio.Future[Any], *, every_s: float = CANCEL_EVERY_S, for_s: float = CANCEL_FOR_S
) -> bool:
    """Cancel `task`, and again every `every_s` until it ends, for at most `for_s`; whether it ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + for_s
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        task.cancel()
        await asyncio.wait([task], timeout=min(every_s, remaining))
    return True


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
