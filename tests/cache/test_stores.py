"""The result cache's stores against real SQLite, PostgreSQL and Redis (and process memory): expiry and eviction."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
import redis

from openfusion.activity.postgres_store import PostgresStore
from openfusion.activity.sqlite_store import SqliteStore
from openfusion.cache.stores import DatabaseStore, MemoryStore, RedisStore, ResultStore

REDIS_URL = "redis://127.0.0.1:6379/0"
LIMIT = 3000

StoreFactory = Callable[[], AbstractAsyncContextManager[ResultStore]]


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """A store of each kind with a 3,000-byte limit, closed afterwards."""
    kind = request.param

    @asynccontextmanager
    async def opened() -> AsyncIterator[ResultStore]:
        if kind == "memory":
            yield MemoryStore(max_bytes=LIMIT)
        elif kind == "sqlite":
            database = await SqliteStore.open(tmp_path / "activity.sqlite3")
            try:
                yield DatabaseStore(database, max_bytes=LIMIT, touch_every_s=0)  # every read a use
            finally:
                await database.close()
        elif kind == "postgres":
            url = request.getfixturevalue("postgres_url")
            database = await PostgresStore.open(url)
            try:
                yield DatabaseStore(database, max_bytes=LIMIT, touch_every_s=0)
            finally:
                await database.close()
        else:
            prefix = f"openfusion-test-{uuid.uuid4().hex}"
            store = RedisStore.from_url(REDIS_URL, prefix=prefix, max_bytes=LIMIT)
            try:
                yield store
            finally:
                await store.aclose()
                client = redis.Redis.from_url(REDIS_URL)
                keys = list(client.scan_iter(f"{prefix}*"))
                if keys:
                    client.delete(*keys)
                client.close()

    return opened


async def test_kept_bytes_come_back_and_unknown_keys_do_not(open_store: StoreFactory) -> None:
    async with open_store() as store:
        await store.put("k1", b"\x00binary\xffvalue", ttl_s=60)
        assert await store.get("k1") == b"\x00binary\xffvalue"
        assert await store.get("k2") is None
        await store.put("k1", b"replaced", ttl_s=60)
        assert await store.get("k1") == b"replaced"
        assert await store.usage() == (1, len(b"replaced"))


async def test_an_entry_expires_after_its_ttl(open_store: StoreFactory) -> None:
    """A TTL of 2 s: the two calls between the put and the first get fit in it on a loaded machine (0.3 s may not)."""
    async with open_store() as store:
        await store.put("short", b"x" * 10, ttl_s=2.0)
        await store.put("long", b"y" * 10, ttl_s=60)
        assert await store.get("short") == b"x" * 10
        await asyncio.sleep(2.1)  # past the TTL, however long the calls took
        assert await store.get("short") is None
        assert await store.get("long") == b"y" * 10
        await store.put("next", b"z", ttl_s=60)  # a write drops what expired
        assert await store.usage() == (2, 11)


async def test_past_the_size_limit_the_least_recently_read_go_first(open_store: StoreFactory) -> None:
    async with open_store() as store:
        for key in ("a", "b", "c"):
            await store.put(key, key.encode() * 1000, ttl_s=60)
            await asyncio.sleep(0.01)  # distinct use times
        assert await store.usage() == (3, 3000)
        assert await store.get("a") is not None  # read: "b" is now the least recently used
        await asyncio.sleep(0.01)
        await store.put("d", b"d" * 1000, ttl_s=60)
        assert await store.get("b") is None
        assert [await store.get(k) is not None for k in ("a", "c", "d")] == [True, True, True]
        assert await store.usage() == (3, 3000)
        await store.put("big", b"e" * 2500, ttl_s=60)  # room for it alone and nothing else but the newest use
        count, size = await store.usage()
        assert size <= LIMIT and await store.get("big") is not None
        assert count == 1


async def test_a_database_read_marks_its_row_used_only_when_the_mark_has_aged(tmp_path: Path) -> None:
    """Most hits are a plain SELECT: a write (and its fsync) only once the last mark is older than a minute."""
    database = await SqliteStore.open(tmp_path / "activity.sqlite3")
    try:
        await database.cache_put("k", b"v", now=1000.0, ttl_s=3600, max_bytes=LIMIT)
        changes = database._conn.total_changes  # SQLite's count of rows written on this connection
        assert await database.cache_get("k", now=1030.0, touch_every_s=60) == b"v"
        assert database._conn.total_changes == changes  # read only
        assert await database.cache_get("k", now=1061.0, touch_every_s=60) == b"v"
        assert database._conn.total_changes == changes + 1  # the mark moved to 1061
        assert await database.cache_get("k", now=1100.0, touch_every_s=60) == b"v"
        assert database._conn.total_changes == changes + 1
    finally:
        await database.close()


async def test_only_its_holder_renews_a_redis_lock_and_a_lapsed_one_is_not_taken_again(redis_prefix: str) -> None:
    store = RedisStore.from_url(REDIS_URL, prefix=redis_prefix, max_bytes=LIMIT)
    lock = f"{redis_prefix}:cache:{{result}}:lock:q"
    try:
        assert await store.lock("q", "first", ttl_s=5) == "first"
        assert await store.renew("q", "first", ttl_s=60) is True
        assert 5_000 < await store.client.pttl(lock) <= 60_000  # it now expires a minute from the renewal
        assert await store.renew("q", "second", ttl_s=600) is False  # not its lock: left as it is
        assert await store.client.pttl(lock) <= 60_000
        await store.unlock("q", "first", kept=True, unkept_ttl_s=2.0)
        assert await store.renew("q", "first", ttl_s=60) is False  # given back (or lapsed): not taken again
        assert not await store.locked("q")
    finally:
        await store.aclose()


async def test_a_redis_lock_names_its_holder_and_a_run_that_kept_nothing_is_marked(redis_prefix: str) -> None:
    """What a request waiting on another replica reads: who has the run, and whether it ended keeping nothing."""
    store = RedisStore.from_url(REDIS_URL, prefix=redis_prefix, max_bytes=LIMIT)
    try:
        assert await store.lock("q", "first", ttl_s=60) == "first"
        assert await store.lock("q", "second", ttl_s=60) == "first"  # taken: the holder, for the waiter
        # A mark of 2 s: the four calls that look at it fit in it on a loaded machine (0.2 s may not).
        await store.unlock("q", "first", kept=False, unkept_ttl_s=2.0)
        assert await store.unkept("first") and not await store.locked("q")
        assert await store.lock("q", "second", ttl_s=60) == "second"  # its place taken; the mark stays
        assert await store.unkept("first") and not await store.unkept("second")
        await asyncio.sleep(2.1)  # past the mark's time, however long the calls took
        assert not await store.unkept("first")  # the mark is short-lived
        await store.unlock("q", "second", kept=True, unkept_ttl_s=2.0)
        assert not await store.unkept("second") and not await store.locked("q")  # a kept run leaves no mark
    finally:
        await store.aclose()
