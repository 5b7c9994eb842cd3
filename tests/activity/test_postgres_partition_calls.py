"""Every PostgresStore call ends at its caller's time limit while PostgreSQL is cut off by a partition.

The store runs against the real PostgreSQL through `PartitionProxy`: once partitioned, a query gets no
answer and no error. Cancelled once, psycopg would ask the server to cancel the query and wait ~10 s more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from e2e.partition import PartitionProxy, through
from openfusion.activity.cancellation import CANCEL_FOR_S
from openfusion.activity.postgres_store import PostgresStore
from openfusion.activity.records import utc_now
from openfusion.activity.stored import StoredResponse

from .support import make_entry

LIMIT_S = 0.3
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
    postgres_url: str, call: Callable[[PostgresStore], Awaitable[Any]]
) -> None:
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
    assert took < LIMIT_S + CANCEL_FOR_S, f"the call took {took:.1f} s"  # not psycopg's ~10 s more


async def test_a_call_cancelled_by_its_caller_ends_at_once_while_the_database_does_not_answer(
    postgres_url: str,
) -> None:
    """A client that leaves cancels the request's task: the store's call ends with it, its connection freed."""
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
            assert proxy.dropped > 0 and not request.done()
            started = time.monotonic()
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            took = time.monotonic() - started
        finally:
            await store.close()
    assert took < CANCEL_FOR_S, f"the cancelled call took {took:.1f} s to end"
