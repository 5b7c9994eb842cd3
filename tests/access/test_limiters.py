"""Limit counters: in-process, and in the real Redis shared by several limiters (replicas)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable

import pytest
import redis

from openfusion.access.errors import LimitsUnavailable
from openfusion.access.limiter import MemoryLimiter
from openfusion.access.redis_limiter import RedisLimiter
from openfusion.errors import ConfigError

from .conftest import REDIS_URL
from .waits import redis_ms, until

# Leases short enough to outlive in a test, long enough that a renewal (every third of it) or the one round trip a
# check takes does not miss it on a loaded machine; their ends are waited for on the Redis clock, not slept through.
LEASE_S = 1.5


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_window_slides() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    for second in (0, 10, 20):
        clock.now = 1000 + second
        assert await limiter.hit("b", limit=3, window_s=60) == 0
    clock.now = 1030
    assert await limiter.hit("b", limit=3, window_s=60) == pytest.approx(30)  # the first one leaves at 1060
    assert await limiter.hit("other", limit=3, window_s=60) == 0  # buckets are separate
    clock.now = 1060
    assert await limiter.hit("b", limit=3, window_s=60) == 0
    assert await limiter.hit("b", limit=3, window_s=60) == pytest.approx(10)  # refused hits did not count


async def test_memory_slots() -> None:
    limiter = MemoryLimiter()
    first, second = await limiter.acquire("b", limit=2), await limiter.acquire("b", limit=2)
    assert first is not None and second is not None
    assert await limiter.acquire("b", limit=2) is None
    await first.release()
    await first.release()  # idempotent
    assert limiter.held("b") == 1
    assert await limiter.acquire("b", limit=2) is not None


@pytest.fixture
async def make_limiter(redis_prefix: str) -> AsyncIterator[Callable[..., RedisLimiter]]:
    """Redis limiters (each with its own client, like separate replicas) on the test's prefix."""
    made: list[RedisLimiter] = []

    def make(lease_ttl_s: float = 60.0) -> RedisLimiter:
        limiter = RedisLimiter.from_url(REDIS_URL, prefix=redis_prefix, lease_ttl_s=lease_ttl_s)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


async def test_redis_window_is_shared_by_replicas(
    make_limiter: Callable[..., RedisLimiter], redis_client: redis.Redis, redis_prefix: str
) -> None:
    one, two = make_limiter(), make_limiter()
    assert [await one.hit("key:a", limit=3, window_s=60) for _ in range(2)] == [0, 0]
    assert await two.hit("key:a", limit=3, window_s=60) == 0
    wait = await two.hit("key:a", limit=3, window_s=60)
    assert 59 < wait <= 60
    assert await one.hit("key:a", limit=3, window_s=60) > 0
    assert await one.hit("key:b", limit=3, window_s=60) == 0
    key = f"{{{redis_prefix}}}:rpm:key:a"
    assert redis_client.zcard(key) == 3  # refused hits are not recorded
    assert 0 < redis_client.pttl(key) <= 60_000  # the log expires with its window


async def test_redis_window_slides(make_limiter: Callable[..., RedisLimiter]) -> None:
    """A window of 2 s holds three round trips to Redis on a loaded machine (0.3 s may not); its end is waited for as
    the refusal tells, rather than for a fixed time."""
    limiter = make_limiter()
    assert await limiter.hit("k", limit=2, window_s=2.0) == 0
    assert await limiter.hit("k", limit=2, window_s=2.0) == 0
    wait = await limiter.hit("k", limit=2, window_s=2.0)
    assert 0 < wait <= 2.0
    await asyncio.sleep(wait + 0.05)
    assert await limiter.hit("k", limit=2, window_s=2.0) == 0


async def test_redis_slots_are_shared_and_given_back(
    make_limiter: Callable[..., RedisLimiter], redis_client: redis.Redis, redis_prefix: str
) -> None:
    one, two = make_limiter(), make_limiter()
    held = [await one.acquire("key:a", limit=2), await two.acquire("key:a", limit=2)]
    assert all(slot is not None for slot in held)
    assert await one.acquire("key:a", limit=2) is None
    assert await two.acquire("key:a", limit=2) is None
    assert await one.acquire("key:b", limit=2) is not None
    slot = held[0]
    assert slot is not None
    await slot.release()
    await slot.release()
    assert redis_client.zcard(f"{{{redis_prefix}}}:fusion:key:a") == 1
    assert await two.acquire("key:a", limit=2) is not None


async def test_a_live_run_keeps_its_slot_past_the_lease_time(
    make_limiter: Callable[..., RedisLimiter], redis_client: redis.Redis, redis_prefix: str
) -> None:
    one, two = make_limiter(lease_ttl_s=LEASE_S), make_limiter(lease_ttl_s=LEASE_S)
    slot = await one.acquire("k", limit=1)
    assert slot is not None
    leases = f"{{{redis_prefix}}}:fusion:k"
    [(_, first_end)] = redis_client.zrange(leases, 0, -1, withscores=True)
    # Two lease times after it was taken, on the Redis clock: a lease renewed once would have ended too; only
    # renewals again and again keep it.
    await until(lambda: redis_ms(redis_client) > first_end + LEASE_S * 1000)
    [(_, end_now)] = redis_client.zrange(leases, 0, -1, withscores=True)
    assert end_now > first_end + LEASE_S * 1000  # renewed meanwhile, past the time waited for
    assert await two.acquire("k", limit=1) is None
    await slot.release()
    assert await two.acquire("k", limit=1) is not None


async def test_a_crashed_replica_cannot_hold_slots_beyond_one_lease_time(
    make_limiter: Callable[..., RedisLimiter], redis_client: redis.Redis
) -> None:
    crashed, survivor = make_limiter(lease_ttl_s=LEASE_S), make_limiter(lease_ttl_s=LEASE_S)
    assert await crashed.acquire("k", limit=2) is not None
    assert await crashed.acquire("k", limit=2) is not None
    taken = redis_ms(redis_client)  # both leases end a lease time after they were taken, before this
    await crashed.aclose()  # gone without giving anything back
    assert await survivor.acquire("k", limit=2) is None
    await until(lambda: redis_ms(redis_client) > taken + LEASE_S * 1000)  # one lease time later, on the Redis clock
    assert await survivor.acquire("k", limit=2) is not None
    assert await survivor.acquire("k", limit=2) is not None


async def test_the_next_admission_after_redis_lost_the_counters_takes_its_replicas_slots_again_once(
    make_limiter: Callable[..., RedisLimiter],
    redis_client: redis.Redis,
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    one, two = make_limiter(), make_limiter()  # two replicas, each running one request
    assert await one.acquire("k", limit=2) is not None
    assert await two.acquire("k", limit=2) is not None
    redis_client.delete(*redis_client.keys(f"{{{redis_prefix}}}:*"))  # what a restart without persistence does
    with caplog.at_level(logging.WARNING, logger="openfusion.access"):
        answers = await asyncio.gather(*(one.acquire("k", limit=2) for _ in range(5)))
    # Its own run counted again before any of them: one more fits, not two; taken again once, not five times.
    assert sum(answer is not None for answer in answers) == 1
    assert sum("lost its counters" in r.getMessage() for r in caplog.records) == 1
    # The other replica's run is counted again at that replica's own next admission (or renewal): until then a
    # third run got in beside it.
    assert await two.acquire("k", limit=2) is None
    assert redis_client.zcard(f"{{{redis_prefix}}}:fusion:k") == 3


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_redis_is_a_503_not_a_crash() -> None:
    limiter = RedisLimiter.from_url(f"redis://:hunter2@127.0.0.1:{closed_port()}/0", prefix="p")
    try:
        with pytest.raises(LimitsUnavailable) as caught:
            await limiter.hit("k", limit=1, window_s=60)
        assert caught.value.status_code == 503 and "hunter2" not in caught.value.message
        with pytest.raises(LimitsUnavailable):
            await limiter.acquire("k", limit=1)
        with pytest.raises(redis.exceptions.ConnectionError):
            await limiter.ping()
    finally:
        await limiter.aclose()


def test_an_invalid_redis_url_is_a_config_error_that_hides_the_url() -> None:
    with pytest.raises(ConfigError) as caught:
        RedisLimiter.from_url("http://user:hunter2@example/0", prefix="p")
    assert "hunter2" not in caught.value.message
