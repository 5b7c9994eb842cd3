"""A request waiting for an identical run on another replica is woken when Redis announces its end (a real Redis).

It used to look again every 50 ms: the entry, the lock, the run's "not kept" mark, ~60 Redis calls a second for every
waiting request. Here the look-again interval without an announcement is an hour, so a waiter that gets its answer
was woken by the announcement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio

from openfusion.cache import service
from openfusion.cache.config import CacheSettings
from openfusion.cache.entry import encode_run
from openfusion.cache.service import ResultCache
from openfusion.cache.stores import RedisStore
from openfusion.observability.metrics import Metrics
from openfusion.pipeline.plan import CachePolicy

REDIS_URL = "redis://127.0.0.1:6379/0"
POLICY = CachePolicy(ttl_s=60)
SETTINGS = CacheSettings(wait_s=30)


class CountingStore(RedisStore):
    """A replica's store that counts the Redis calls its waiters make."""

    calls = 0

    async def get(self, key: str) -> bytes | None:
        self.calls += 1
        return await super().get(key)

    async def lock(self, key: str, token: str, *, ttl_s: float) -> str:
        self.calls += 1
        return await super().lock(key, token, ttl_s=ttl_s)

    async def unkept(self, token: str) -> bool:
        self.calls += 1
        return await super().unkept(token)


async def until(condition: Callable[[], bool], *, timeout_s: float = 10.0) -> None:
    """Wait until `condition()` holds (checked every 10 ms)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


@pytest.fixture
async def replicas(
    redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[ResultCache, ResultCache]]:
    monkeypatch.setattr(service, "_LOOK_AGAIN_S", 3600.0)
    one = ResultCache(RedisStore.from_url(REDIS_URL, prefix=redis_prefix, max_bytes=1 << 20), SETTINGS, Metrics())
    two = ResultCache(CountingStore.from_url(REDIS_URL, prefix=redis_prefix, max_bytes=1 << 20), SETTINGS, Metrics())
    try:
        yield one, two
    finally:
        await one.aclose()
        await two.aclose()


async def keep(one: ResultCache, running: service.Ticket) -> None:
    """Replica one's run ends: its result kept, its lease given back."""
    run = encode_run(generation_id="gen-1", created_at=0.0, cost=0.5, streamed=False, flags=[], events=[])
    await one.store.put("question", run, ttl_s=60)
    running.kept = True
    running.release()
    await asyncio.gather(*one._unlocking)


async def test_a_waiter_on_another_replica_is_woken_by_the_runs_end_not_by_looking_again(
    replicas: tuple[ResultCache, ResultCache],
) -> None:
    one, two = replicas
    store = two.store
    assert isinstance(store, CountingStore)
    running = await one.consult("question", POLICY, mode="use")
    assert running.status == "miss"  # replica one makes the run

    waiting = asyncio.create_task(two.consult("question", POLICY, mode="use"))
    await until(lambda: store.ends.live and store.calls >= 2)  # looked, found the run taken, subscribed
    before = store.calls
    await asyncio.sleep(1.0)
    assert store.calls - before <= 3  # polling every 50 ms made ~60 calls in this second
    assert not waiting.done()

    await keep(one, running)
    answer = await asyncio.wait_for(waiting, 10)
    assert answer.status == "hit" and answer.entry is not None and answer.entry.generation_id == "gen-1"


async def test_waiters_look_again_when_the_subscription_is_lost_and_are_woken_once_it_is_back(
    replicas: tuple[ResultCache, ResultCache],
) -> None:
    one, two = replicas
    store = two.store
    assert isinstance(store, CountingStore)
    admin = redis.asyncio.Redis.from_url(REDIS_URL)
    waiting: asyncio.Task[service.Ticket] | None = None
    try:
        others = {client["id"] for client in await admin.client_list(_type="pubsub")}
        running = await one.consult("question", POLICY, mode="use")
        waiting = asyncio.create_task(two.consult("question", POLICY, mode="use"))
        await until(lambda: store.ends.live and store.calls >= 2)
        # Each replica's one subscription (replica one subscribed when it looked too).
        ours = [client["id"] for client in await admin.client_list(_type="pubsub") if client["id"] not in others]
        assert len(ours) == 2
        before = store.calls

        for client in ours:  # the fault: Redis drops the subscriptions
            assert await admin.client_kill_filter(_id=client) == 1
        await until(lambda: store.calls > before)  # the waiter looked again at once
        await until(lambda: store.ends.live)  # subscribed again
        assert not waiting.done()

        await keep(one, running)
        answer = await asyncio.wait_for(waiting, 10)
        assert answer.status == "hit"
    finally:
        if waiting is not None:
            waiting.cancel()
        await admin.aclose()


async def test_without_channels_in_its_acl_a_replica_gives_runs_back_and_its_waiters_look_every_50_ms(
    redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis 7 gives a new ACL user no channels: the announcement is refused, the unlock is not (nor logged as)."""
    admin = redis.asyncio.Redis.from_url(REDIS_URL)
    user, password = f"{redis_prefix}-user", "not-a-real-secret"
    await admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"],
                            reset_channels=True)  # fmt: skip
    url = f"redis://{user}:{password}@127.0.0.1:6379/0"
    one = ResultCache(RedisStore.from_url(url, prefix=redis_prefix, max_bytes=1 << 20), SETTINGS, Metrics())
    two = ResultCache(CountingStore.from_url(url, prefix=redis_prefix, max_bytes=1 << 20), SETTINGS, Metrics())
    store = two.store
    assert isinstance(store, CountingStore)
    try:
        running = await one.consult("question", POLICY, mode="use")
        waiting = asyncio.create_task(two.consult("question", POLICY, mode="use"))
        await until(lambda: store.calls >= 6)  # looking every 50 ms: no subscription
        assert not store.ends.live

        await keep(one, running)
        assert not await one.store.locked("question")  # given back, though its announcement was refused
        assert not [r for r in caplog.records if "unlock failed" in r.getMessage()]
        assert [r for r in caplog.records if "no subscription to runs' ends" in r.getMessage()]  # said once
        answer = await asyncio.wait_for(waiting, 10)
        assert answer.status == "hit"
    finally:
        await one.aclose()
        await two.aclose()
        await admin.acl_deluser(user)
        await admin.aclose()
