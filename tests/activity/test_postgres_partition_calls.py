"""Every PostgresStore call ends at its caller's time limit while PostgreSQL is cut off by a partition.

The store runs against the real PostgreSQL through `PartitionProxy`: once partitioned, a query gets no
answer and no error. Cancelled once, psycopg would ask the server to cancel the query and wait ~10 s more.
The time bounds below are half of that: they catch the hang, not a slow (loaded) machine; the warning the store
logs when a call goes on after being cancelled tells the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from e2e.partition import PartitionProxy, through
from openfusion.activity.cancellation import CANCEL_EVERY_S
from openfusion.activity.postgres_store import PostgresStore
from openfusion.activity.records import utc_now
from openfusion.activity.stored import StoredResponse

from .support import make_entry

LIMIT_S = 0.3
HANG_S = 5.0  # half of psycopg's ~10 s wait for the server after a first cancellation
WENT_ON = "went on after being cancelled"
NOW = utc_now()
STORED = StoredResponse("resp_1", "", "gen-1", NOW, NOW + timedelta(days=1), [], {"id": "resp_1"})

CALLS: dict[str, Callable[[PostgresStore], Awaitable[Any]]] = {
    "ping": lambda store: store.ping(),
    "write": lambda store: store.write([make_entry("gen-1")]),
    "list": lambda store: store.list(limit=10),
    "spent_today": lambda store: store.spent_today(None),
    "save_response": lambda store: store.save_response(STORED),
    "load_response": lambda store: store.load_response("resp_1", owner="", now=NOW),
    "cache_get": lambda store: store.cache_get("key", now=time.time(), touch_every_s=60.0),
    "cache_put": lambda store: store.cache_put("key", b"run", now=time.time(), ttl_s=60.0, max_bytes=1 << 20),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
async def test_a_call_ends_at_its_time_limit_while_the_database_does_not_answer(
    postgres_url: str, call: Callable[[PostgresStore], Awaitable[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="openfusion.activity")
    with PartitionProxy(("127.0.0.1", 5432)) as proxy:
        store = await PostgresStore.open(through(proxy, postgres_url))
        try:
            await store.ping()  # a connection in the pool, idle: the call below takes it
            proxy.partition()
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(LIMIT_S):
                    await call(store)
            took = time.monotonic() - started
        finally:
            await store.close()
    assert proxy.dropped > 0  # the fault happened: the call's bytes went into the partition
    assert took < LIMIT_S + HANG_S, f"the call took {took:.1f} s"  # not psycopg's ~10 s more
    assert not [r for r in caplog.records if WENT_ON in r.getMessage()]


async def test_a_call_cancelled_by_its_caller_ends_at_once_while_the_database_does_not_answer(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that leaves cancels the request's task: the store's call ends with it, its connection freed."""
    caplog.set_level(logging.WARNING, logger="openfusion.activity")
    async with unanswered_call(postgres_url) as (proxy, request):
        assert proxy.dropped > 0 and not request.done()
        started = time.monotonic()
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        took = time.monotonic() - started
    assert took < HANG_S, f"the cancelled call took {took:.1f} s to end"
    assert not [r for r in caplog.records if WENT_ON in r.getMessage()]


def calls_under(request: asyncio.Task[Any]) -> list[asyncio.Task[Any]]:
    """The store's calls still running besides `request` (each runs in a task of its own, `ends_when_cancelled`)."""
    return [t for t in asyncio.all_tasks() if t is not request and "PostgresStore." in t.get_coro().__qualname__]


@contextlib.asynccontextmanager
async def unanswered_call(postgres_url: str) -> AsyncIterator[tuple[PartitionProxy, asyncio.Task[Any]]]:
    """A store call (in a task: the request's) whose query is out, unanswered behind a partition; the store closed
    after."""
    with PartitionProxy(("127.0.0.1", 5432)) as proxy:
        store = await PostgresStore.open(through(proxy, postgres_url))
        try:
            await store.ping()
            proxy.partition()
            request = asyncio.create_task(store.cache_get("key", now=time.time(), touch_every_s=60.0))
            for _ in range(500):  # until the query is out, unanswered
                if proxy.dropped:
                    break
                await asyncio.wait([request], timeout=0.01)
            yield proxy, request
        finally:
            await store.close()


async def test_a_cancelled_call_ends_even_when_the_event_loop_stalls_after_its_first_cancellation(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A loaded machine (or a coroutine holding the loop) can stall the loop for over a second right after the call
    is first cancelled. The call was re-cancelled for one second of wall time at most: spent in the stall, it got only
    the first cancellation, which psycopg answers by waiting ~10 s for the partitioned server, connection held."""
    caplog.set_level(logging.WARNING, logger="openfusion.activity")
    async with unanswered_call(postgres_url) as (proxy, request):
        assert proxy.dropped > 0 and not request.done() and len(calls_under(request)) == 1
        stalled: list[float] = []

        def stall() -> None:  # runs in the loop right after the call's first cancellation is made
            started = time.monotonic()
            time.sleep(1.5)
            stalled.append(time.monotonic() - started)

        request.cancel()
        asyncio.get_running_loop().call_soon(stall)
        with pytest.raises(asyncio.CancelledError):
            await request
        running = calls_under(request)
        for task in running:  # not left to psycopg's own ~10 s (the proxy's close ends it), once seen
            task.cancel()
    assert stalled and stalled[0] >= 1.5  # the fault happened: the loop stood still past a second
    assert running == [], "the cancelled call went on after its caller had left"
    assert not [r for r in caplog.records if WENT_ON in r.getMessage()]


async def test_a_call_whose_caller_is_cancelled_twice_still_ends(postgres_url: str) -> None:
    """A caller cancelled again while its call is being re-cancelled (its client left, then the shutdown's grace
    period ended): the re-cancelling stopped there, leaving the call with its first cancellation only, which
    psycopg answers by waiting ~10 s for the partitioned server, connection held."""
    async with unanswered_call(postgres_url) as (proxy, request):
        assert proxy.dropped > 0 and not request.done() and len(calls_under(request)) == 1
        seen: list[bool] = []

        def cancel_again() -> None:  # after the call's first cancellation, before the next (CANCEL_EVERY_S)
            seen.append(not request.done())
            request.cancel()

        request.cancel()
        asyncio.get_running_loop().call_later(CANCEL_EVERY_S / 5, cancel_again)
        with pytest.raises(asyncio.CancelledError):
            await request
        running = calls_under(request)
        for task in running:  # not left to psycopg's own ~10 s (the proxy's close ends it), once seen
            task.cancel()
    assert seen == [True]  # the fault happened: the caller was cancelled again while its call was
    assert running == [], "the cancelled call went on after its caller had left"
