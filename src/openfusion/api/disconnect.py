"""Cancel a request's work when its client goes away (Starlette only does this for streamed bodies)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from openfusion.api.shutdown import Drain, shutting_down
from openfusion.errors import OpenFusionError

T = TypeVar("T")


class ClientDisconnected(OpenFusionError):
    """The client closed the connection before the answer was ready; the run was cancelled."""

    status_code = 499
    error_type = "client_closed_request"
    code = "cancelled"


async def cancel_on_disconnect(request: Request, work: Awaitable[T], *, drain: Drain | None = None) -> T:
    """Await `work` (after the body was read); if the client disconnects first, cancel it at once.

    With a `drain`, the end of the shutdown grace period cancels it too, and the request fails with
    `server_shutting_down` (a 503 the client can read).
    """
    task = asyncio.ensure_future(work)
    if drain is not None:
        drain.watch(task)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.create_task(watch(), name="disconnect-watch")
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():  # the watcher saw the client leave
            raise ClientDisconnected("The client closed the connection; the request was cancelled.") from None
        if drain is not None and drain.stopped(task) and not _cancelling():
            raise shutting_down() from None
        raise
    finally:
        if drain is not None:
            drain.unwatch(task)
        watcher.cancel()
        if not task.done():
            task.cancel()


def _cancelling() -> int:
    """Whether the request's own task is being cancelled (then that cancellation goes on, not ours)."""
    current = asyncio.current_task()
    return current.cancelling() if current is not None else 0
