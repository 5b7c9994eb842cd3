"""A request's work, cancelled when its client leaves: run in the request's own task, its cancellations balanced."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from fastapi import Request

from openfusion.api.disconnect import ClientDisconnected, cancel_on_disconnect


class Connection:
    """`request.receive()` as uvicorn gives it to an app that read its body: nothing until the client leaves."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}


def request_on(connection: Connection) -> Request:
    return cast(Request, connection)


async def test_the_work_runs_in_the_requests_own_task() -> None:
    """No task of its own: one would cost a task and two passes of the event loop on every request's way."""

    async def work() -> asyncio.Task[Any] | None:
        await asyncio.sleep(0)
        return asyncio.current_task()

    assert await cancel_on_disconnect(request_on(Connection()), work()) is asyncio.current_task()


async def test_a_client_that_leaves_cancels_the_work_and_the_request_fails_as_its_leaving() -> None:
    connection = Connection()
    cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    asyncio.get_running_loop().call_later(0.01, connection.gone.set)
    with pytest.raises(ClientDisconnected):
        await cancel_on_disconnect(request_on(connection), work())
    assert cancelled.is_set()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the request's task goes on, with nothing left to cancel it
    await asyncio.sleep(0.01)  # and is not cancelled later


async def test_work_that_ends_despite_the_clients_leaving_gives_its_answer_and_leaves_no_cancellation() -> None:
    connection = Connection()

    async def work() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "finished anyway"
        return "not cancelled"

    asyncio.get_running_loop().call_later(0.01, connection.gone.set)
    assert await cancel_on_disconnect(request_on(connection), work()) == "finished anyway"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_cancellation_from_elsewhere_is_not_taken_for_the_clients_leaving() -> None:
    connection = Connection()
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.sleep(10)

    request = asyncio.create_task(cancel_on_disconnect(request_on(connection), work()))
    await started.wait()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
