"""Spend reservations: the same rules in this process and in the real Redis, step by step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import redis

from e2e.gateway import Link
from fakes.upstream import wait_until
from openfusion.access.redis_spend import RedisSpendBook
from openfusion.access.spend import MemorySpendBook, Refusal, Reservation, SpendBook

from .conftest import REDIS_URL
from .waits import redis_ms, until

# Today (UTC), as the server reserves: a day's keys expire a day after it ends, so a fixed date would expire at once.
TODAY = datetime.now(UTC).date()
DAY, NEXT_DAY = TODAY.isoformat(), (TODAY + timedelta(days=1)).isoformat()
BUCKET = "key:team-a"


@pytest.fixture(params=["memory", "redis"])
async def book(request: pytest.FixtureRequest) -> AsyncIterator[SpendBook]:
    """A spend book with a short reading window (1 s); the Redis one on a fresh key prefix."""
    if request.param == "memory":
        yield MemorySpendBook(read_window_s=1.0)
        return
    prefix = request.getfixturevalue("redis_prefix")
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    shared = RedisSpendBook(client, prefix=prefix, read_window_s=1.0, clock_margin_s=0.05)
    yield shared
    await shared.aclose()
    await client.aclose()


async def reserve(book: SpendBook, estimate: float, *, cap: float = 1.0, spent: float = 0.0) -> Reservation | Refusal:
    outcome = await book.reserve(BUCKET, day=DAY, cap=cap, estimate=estimate, spent=spent, read_at=await book.clock())
    assert outcome is not None
    return outcome


async def settled(book: SpendBook) -> None:
    """Wait until a shared book's background settlements have reached Redis (its settler sends until none is left)."""
    if isinstance(book, RedisSpendBook) and book._settler is not None:
        await asyncio.wait_for(asyncio.shield(book._settler), timeout=60)  # the deadline only bounds a hang
    assert not getattr(book, "_settlements", None)


async def test_reservations_count_until_the_cap(book: SpendBook) -> None:
    first, second = await reserve(book, 0.4), await reserve(book, 0.4)
    assert isinstance(first, Reservation) and isinstance(second, Reservation)
    refused = await reserve(book, 0.4)
    assert refused == Refusal(counted=pytest.approx(0.8), in_flight=pytest.approx(0.8))
    # What the store already counts adds to what requests in flight hold.
    assert isinstance(await reserve(book, 0.1, spent=0.05), Reservation)
    assert isinstance(await reserve(book, 0.1, spent=0.05), Refusal)


async def test_a_reservation_never_used_is_given_back(book: SpendBook) -> None:
    unused = await reserve(book, 0.9)
    assert isinstance(unused, Reservation)
    await unused.release()
    assert isinstance(await reserve(book, 0.9), Reservation)


async def test_a_settled_cost_counts_until_a_reading_after_its_write(book: SpendBook) -> None:
    held = await reserve(book, 0.9)
    assert isinstance(held, Reservation)
    before_write = await book.clock()  # a reading of the store begun before the write lands
    held.started()
    held.settle(0.3)
    assert isinstance(await reserve(book, 0.2), Refusal)  # still its estimate until the record is written
    held.written(True)
    await settled(book)
    await held.release()  # after settling: nothing to give back
    # Read before the write: the store does not show it, so the reservation counts it (at its actual cost).
    stale_view = await book.reserve(BUCKET, day=DAY, cap=1.0, estimate=0.8, spent=0.0, read_at=before_write)
    assert isinstance(stale_view, Refusal) and stale_view.counted == pytest.approx(0.3)
    # Read after: the store shows it, and the reservation no longer counts.
    await asyncio.sleep(0.1)
    after = await book.reserve(BUCKET, day=DAY, cap=1.0, estimate=0.7, spent=0.3, read_at=await book.clock())
    assert isinstance(after, Reservation)


async def test_a_reading_older_than_the_window_is_read_again(book: SpendBook) -> None:
    read_at = await book.clock() - 2.0
    assert await book.reserve(BUCKET, day=DAY, cap=1.0, estimate=0.1, spent=0.0, read_at=read_at) is None


@pytest.mark.parametrize("how", ["unknown cost", "lost record", "never settled"])
async def test_costs_the_store_will_not_count_stay_counted_all_day(book: SpendBook, how: str) -> None:
    held = await reserve(book, 0.5)
    assert isinstance(held, Reservation)
    held.started()
    if how == "unknown cost":  # a stream without usage, a cancelled call: its estimate is what it may have cost
        held.settle(None)
        kept = 0.5
    elif how == "lost record":
        held.settle(0.2)
        held.written(False)
        kept = 0.2
    else:  # the response ended without its ledger closing
        await held.release()
        kept = 0.5
    await settled(book)
    await asyncio.sleep(1.2)  # past the reading window
    refused = await reserve(book, 1.0 - kept + 0.01)
    assert isinstance(refused, Refusal) and refused.counted == pytest.approx(kept) and refused.in_flight == 0
    assert isinstance(await reserve(book, 1.0 - kept - 0.01), Reservation)
    # Another day starts from nothing.
    tomorrow = await book.reserve(BUCKET, day=NEXT_DAY, cap=1.0, estimate=1.0, spent=0.0, read_at=await book.clock())
    assert isinstance(tomorrow, Reservation)


async def test_each_bucket_has_its_own_reservations(book: SpendBook) -> None:
    assert isinstance(await reserve(book, 1.0), Reservation)
    other = await book.reserve("key:team-b", day=DAY, cap=1.0, estimate=1.0, spent=0.0, read_at=await book.clock())
    assert isinstance(other, Reservation)


async def test_a_crashed_replicas_reservations_expire_with_their_lease(
    redis_prefix: str, redis_client: redis.Redis
) -> None:
    """Leases of 1.5 s: renewed every 0.5 s, which a loaded machine keeps up with; the dead one's end is waited for
    on the Redis clock."""
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    crashed = RedisSpendBook(client, prefix=redis_prefix, lease_ttl_s=1.5)
    alive = RedisSpendBook(client, prefix=redis_prefix, lease_ttl_s=1.5)
    leases = f"{{{redis_prefix}}}:spend:{BUCKET}:{DAY}:leases"
    try:
        held = await reserve(crashed, 1.0)
        assert isinstance(held, Reservation)
        running = await reserve(alive, 0.5, cap=2.0)
        assert isinstance(running, Reservation)
        assert crashed._renewer is not None
        crashed._renewer.cancel()  # the replica dies: its leases are no longer renewed
        [hold] = crashed._live
        end = redis_client.zscore(leases, hold)
        assert end is not None
        await until(lambda: redis_ms(redis_client) > end)  # its lease has ended, on the Redis clock
        # The dead replica's hold is gone; the live one's, renewed, still counts.
        refused = await reserve(alive, 1.6, cap=2.0)
        assert isinstance(refused, Refusal) and refused.counted == pytest.approx(0.5)
        assert isinstance(await reserve(alive, 1.5, cap=2.0), Reservation)
    finally:
        await alive.aclose()
        await client.aclose()


async def test_a_settlement_sent_again_is_counted_once(redis_prefix: str) -> None:
    """A settlement whose answer was lost (Redis took it, the connection went) is sent again: counted once."""
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    book = RedisSpendBook(client, prefix=redis_prefix)
    try:
        held = await reserve(book, 0.5)
        assert isinstance(held, Reservation)
        held.started()
        held.settle(None)  # kept all day, at its estimate
        [(keys, args)] = book._settlements
        book.settle_later(args[0], keys[:4], args)  # the same settlement again
        await settled(book)
        refused = await reserve(book, 0.6)
        assert isinstance(refused, Refusal) and refused.counted == pytest.approx(0.5)
    finally:
        await book.aclose()
        await client.aclose()


async def test_a_reservation_given_back_while_redis_is_cut_off_is_freed_once_redis_answers(
    redis_prefix: str, redis_client: redis.Redis
) -> None:
    """It stayed held until its lease ran out (a minute), refusing the key's requests that it stood in the way of."""
    link = Link(("127.0.0.1", 6379))
    client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{link.port}/0")
    book = RedisSpendBook(client, prefix=redis_prefix)
    running = f"{{{redis_prefix}}}:spend:{BUCKET}:{DAY}:running"
    try:
        unused = await reserve(book, 0.9)
        assert isinstance(unused, Reservation) and redis_client.hlen(running) == 1
        link.cut()
        await unused.release()  # never used: given back, but Redis cannot be reached
        assert redis_client.hlen(running) == 1  # the fault: still held
        link.mend()
        await asyncio.to_thread(wait_until, lambda: not redis_client.hlen(running), 5)  # well within the lease's minute
        assert isinstance(await reserve(book, 0.9), Reservation)
    finally:
        link.cut()
        await book.aclose()
        await client.aclose()


async def test_readings_are_dated_by_the_redis_clock_never_late(redis_prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    book = RedisSpendBook(client, prefix=redis_prefix)
    try:
        for _ in range(20):
            dated = await book.clock()  # asked of Redis once, then told from the last script's time
            seconds, micros = await client.time()
            redis_now = seconds + micros / 1e6
            # Never after the Redis time (a reading dated late could miss a cost), never far before it.
            assert redis_now - 1.0 <= dated <= redis_now
            assert isinstance(await reserve(book, 0.01, cap=100.0), Reservation)
    finally:
        await book.aclose()
        await client.aclose()
