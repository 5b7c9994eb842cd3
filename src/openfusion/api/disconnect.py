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

    The work runs in the request's own task, cancelled by the watcher of the connection: a task of its own would
    cost a task and two passes of the event loop per request, one before the work starts and one between its end
    and the response (measured at ~60 µs on the way of a c=1 request).
    """
    task = asyncio.current_task()
    assert task is not None, "called from a request's task"
    if drain is not None:
        drain.watch(task)

    left: list[bool] = []  # [True] once the watcher saw the client leave and cancelled this task

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                left.append(True)
                task.cancel()
                return

    watcher = asyncio.create_task(watch(), name="disconnect-watch")
    try:
        return await work
    except asyncio.CancelledError:
        if left:  # the watcher's cancellation: the request fails as the client's leaving, unless another came too
            left.clear()  # taken back here
            if task.uncancel() == 0:
                raise ClientDisconnected("The client closed the connection; the request was cancelled.") from None
            raise
        if drain is not None and drain.stopped(task):
            task.uncancel()
            raise shutting_down() from None
        raise
    finally:
        if drain is not None:
            drain.unwatch(task)
        watcher.cancel()
        if left:  # the work swallowed the watcher's cancellation and ended: taken back, it is no one else's
            task.uncancel()
