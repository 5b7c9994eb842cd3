"""The background writer over a real SQLite store: batching, flush on close, outages and a full queue."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from activity.support import T0, Told, entries_over_time, make_entry
from openfusion.activity import (
    ActivityEntry,
    ActivityPage,
    ActivitySettings,
    ActivityStore,
    ActivityWriter,
    DataRefused,
    StoreUnavailable,
    Tokens,
    WriterStats,
)
from openfusion.activity.sqlite_store import SqliteStore


class RecordingStore:
    """A real store that also remembers the size of every batch it was asked to write."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.batches: list[int] = []
        self.wrote = asyncio.Event()  # set after each completed write

    async def write(self, batch: Sequence[ActivityEntry]) -> None:
        await self.inner.write(batch)
        self.batches.append(len(batch))
        self.wrote.set()

    async def wait_for_batches(self, sizes: list[int], timeout_s: float = 5.0) -> None:
        """Wait until the first completed writes had these sizes."""
        async with asyncio.timeout(timeout_s):
            while self.batches[: len(sizes)] != sizes:
                self.wrote.clear()
                await self.wrote.wait()

    async def get(self, generation_id: str) -> ActivityEntry | None:
        return await self.inner.get(generation_id)

    async def list(self, *, limit: int, before: str | None = None) -> ActivityPage:
        return await self.inner.list(limit=limit, before=before)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


class FailingStore(RecordingStore):
    """A store whose first `failures` writes raise, as during a database outage (a ping then fails too)."""

    def __init__(self, inner: SqliteStore, *, failures: int) -> None:
        super().__init__(inner)
        self.failures = failures
        self.down = False

    async def write(self, batch: Sequence[ActivityEntry]) -> None:
        self.batches.append(len(batch))
        self.down = self.failures > 0
        if self.down:
            self.failures -= 1
            raise StoreUnavailable("activity database error: connection refused")
        await self.inner.write(batch)

    async def ping(self) -> None:
        if self.down:
            raise StoreUnavailable("activity database error: connection refused")
        await self.inner.ping()


class HangingStore(RecordingStore):
    """A store whose writes never return (a database that accepts the connection and then hangs)."""

    async def write(self, batch: Sequence[ActivityEntry]) -> None:
        self.batches.append(len(batch))
        await asyncio.Event().wait()


async def _stored_ids(store: SqliteStore) -> list[str]:
    page = await store.list(limit=200)
    return sorted(g.id for g in page.generations)


async def test_records_are_batched_by_size(sqlite_store: SqliteStore) -> None:
    store = RecordingStore(sqlite_store)
    writer = ActivityWriter(store, batch_size=3, flush_interval_s=5.0)
    writer.start()
    entries = entries_over_time(7)
    for entry in entries:
        assert writer.record(entry.generation, entry.calls) is True
    # A full batch goes out without waiting for the (long) interval.
    await store.wait_for_batches([3, 3])
    await writer.aclose()
    assert store.batches == [3, 3, 1]
    assert await _stored_ids(sqlite_store) == sorted(e.generation.id for e in entries)
    assert writer.stats.written == 7 and writer.stats.queued == 0


async def test_a_lone_record_is_written_after_the_interval(sqlite_store: SqliteStore) -> None:
    store = RecordingStore(sqlite_store)
    async with ActivityWriter(store, batch_size=100, flush_interval_s=0.05) as writer:
        entry = make_entry("gen-lone")
        writer.record(entry.generation, entry.calls)
        await store.wait_for_batches([1])
        assert await sqlite_store.get("gen-lone") == entry


async def test_a_record_someone_waits_for_goes_out_at_once_with_those_queued(sqlite_store: SqliteStore) -> None:
    store = RecordingStore(sqlite_store)
    async with ActivityWriter(store, batch_size=100, flush_interval_s=60.0) as writer:
        told: dict[str, bool] = {}
        for name in ("gen-queued-1", "gen-queued-2"):  # no hurry: they would wait a minute for company
            entry = make_entry(name)
            writer.record(entry.generation, entry.calls)
        awaited = make_entry("gen-awaited")
        writer.record(awaited.generation, awaited.calls, on_written=lambda ok: told.update(awaited=ok), hurry=True)
        await asyncio.wait_for(store.wait_for_batches([3]), timeout=10)  # one write, not the minute
        assert told == {"awaited": True}
        assert await _stored_ids(sqlite_store) == ["gen-awaited", "gen-queued-1", "gen-queued-2"]
        later = make_entry("gen-later")  # the hurry is over: batching again
        writer.record(later.generation, later.calls)
        await asyncio.sleep(0.2)
        assert store.batches == [3]


def test_records_wait_for_their_store_by_default_with_postgresql_only(sqlite_store: SqliteStore) -> None:
    sqlite = sqlite_store
    assert not ActivityWriter.from_settings(sqlite, ActivitySettings()).confirms
    assert ActivityWriter.from_settings(sqlite, ActivitySettings(), shared=True).confirms
    assert ActivityWriter.from_settings(sqlite, ActivitySettings(record_before_end=True)).confirms
    assert not ActivityWriter.from_settings(sqlite, ActivitySettings(record_before_end=False), shared=True).confirms


async def test_close_flushes_everything_queued(sqlite_store: SqliteStore) -> None:
    writer = ActivityWriter(sqlite_store, batch_size=50, flush_interval_s=60.0)
    writer.start()
    entries = entries_over_time(180)
    for entry in entries:
        writer.record(entry.generation, entry.calls)
    await writer.aclose()
    assert writer.stats.written == 180 and writer.stats.failed == 0 and writer.stats.dropped == 0
    page = await sqlite_store.list(limit=200)
    assert len(page.generations) == 180
    assert await sqlite_store.get("gen-179") == entries[179]


async def test_close_without_start_still_writes(sqlite_store: SqliteStore) -> None:
    writer = ActivityWriter(sqlite_store)
    entry = make_entry("gen-unstarted")
    writer.record(entry.generation, entry.calls)
    await writer.aclose()
    assert await sqlite_store.get("gen-unstarted") == entry


async def test_store_outage_is_counted_not_raised(sqlite_store: SqliteStore, caplog: pytest.LogCaptureFixture) -> None:
    store = FailingStore(sqlite_store, failures=1)
    writer = ActivityWriter(store, batch_size=4, flush_interval_s=60.0)
    writer.start()
    with caplog.at_level(logging.WARNING, logger="openfusion.activity"):
        for entry in entries_over_time(6):
            assert writer.record(entry.generation, entry.calls) is True
        await writer.aclose()  # does not raise
    assert store.batches == [4, 2]
    assert writer.stats.failed == 4 and writer.stats.written == 2
    assert "write failed, 4 generation(s) lost" in caplog.text
    # The store came back: the batch after the outage is there.
    assert await _stored_ids(sqlite_store) == ["gen-004", "gen-005"]


async def test_records_a_store_that_does_not_answer_could_not_take_are_written_when_it_answers(
    sqlite_store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = FailingStore(sqlite_store, failures=2)  # the first write and the next try: the database is restarting
    writer = ActivityWriter(store, batch_size=10, flush_interval_s=0.01)
    told = Told(3)
    writer.start()
    with caplog.at_level(logging.WARNING, logger="openfusion.activity"):
        for entry in entries_over_time(3):
            writer.record(entry.generation, entry.calls, on_written=told)
        await asyncio.wait_for(told.everything(), timeout=5)
        assert writer.stats == WriterStats(written=3, dropped=0, failed=0, queued=0)
        await writer.aclose()
    assert store.batches == [3, 3, 3] and told.said == [True] * 3
    assert await _stored_ids(sqlite_store) == ["gen-000", "gen-001", "gen-002"]
    assert "3 generation(s) kept queued until it does" in caplog.text and "lost" not in caplog.text


async def test_records_a_store_still_fails_to_take_at_close_are_counted_lost(
    sqlite_store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    class GoneStore(RecordingStore):
        """Fails every write at once (its connections reset), while it answers pings."""

        async def write(self, batch: Sequence[ActivityEntry]) -> None:
            self.batches.append(len(batch))
            raise StoreUnavailable("activity database error: connection reset")

    writer = ActivityWriter(GoneStore(sqlite_store), batch_size=10, flush_interval_s=0.01)
    told: list[bool] = []
    writer.start()
    for entry in entries_over_time(2):
        writer.record(entry.generation, entry.calls, on_written=told.append)
    await asyncio.sleep(0.1)  # the write failed: kept queued, tried again in 0.5 s
    assert writer.stats == WriterStats(written=0, dropped=0, failed=0, queued=2) and told == []
    with caplog.at_level(logging.WARNING, logger="openfusion.activity"):
        await writer.aclose(timeout_s=0.2)
    assert writer.stats == WriterStats(written=0, dropped=0, failed=2, queued=0) and told == [False, False]
    assert "2 generation(s) lost" in caplog.text


async def test_records_a_store_that_answers_but_does_not_write_could_not_take_are_written_when_it_does(
    sqlite_store: SqliteStore,
) -> None:
    class ReadOnlyStore(RecordingStore):
        """Answers pings, but fails its first writes (read-only after a failover, a table locked, a full disk)."""

        failures = 3

        async def write(self, batch: Sequence[ActivityEntry]) -> None:
            if self.failures:
                self.failures -= 1
                raise StoreUnavailable("activity database error: cannot execute INSERT in a read-only transaction")
            await super().write(batch)

    store = ReadOnlyStore(sqlite_store)
    told: list[bool] = []
    async with ActivityWriter(store, batch_size=10, flush_interval_s=0.01) as writer:
        for entry in entries_over_time(3):
            writer.record(entry.generation, entry.calls, on_written=told.append)
        # Each try fails its batch, then (the store answers pings) its first record alone, until it writes.
        await asyncio.wait_for(store.wait_for_batches([1, 1, 1]), timeout=10)
    assert store.failures == 0 and told == [True] * 3
    assert writer.stats == WriterStats(written=3, dropped=0, failed=0, queued=0)
    assert await _stored_ids(sqlite_store) == ["gen-000", "gen-001", "gen-002"]


async def test_records_a_sqlite_file_locked_by_another_process_could_not_take_are_written_once_it_is_free(
    sqlite_path: Path,
) -> None:
    store = await SqliteStore.open(sqlite_path, busy_timeout_s=0.05)
    other = sqlite3.connect(sqlite_path, isolation_level=None)  # a backup, another worker's long write
    other.execute("BEGIN IMMEDIATE")
    told = Told(3)
    try:
        async with ActivityWriter(store, batch_size=10, flush_interval_s=0.01) as writer:
            for entry in entries_over_time(3):
                writer.record(entry.generation, entry.calls, on_written=told)
            await asyncio.sleep(0.8)  # tried at once and 0.5 s later: the file stays locked
            assert writer.stats == WriterStats(written=0, dropped=0, failed=0, queued=3) and not told.said
            other.execute("COMMIT")
            await asyncio.wait_for(told.everything(), timeout=10)
        assert told.said == [True] * 3 and writer.stats.lost == 0
        assert await _stored_ids(store) == ["gen-000", "gen-001", "gen-002"]
    finally:
        other.close()
        await store.close()


async def test_a_refused_record_costs_only_itself(store: ActivityStore, caplog: pytest.LogCaptureFixture) -> None:
    # A token count past BIGINT / SQLite INTEGER: both databases refuse the row, so they refuse its batch.
    huge = Tokens(prompt_tokens=2**63, completion_tokens=1, total_tokens=2**63 + 1)
    bad = make_entry("gen-bad", usage=huge)
    good = [make_entry(f"gen-good-{i}", created_at=T0 + timedelta(seconds=i)) for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="openfusion.activity"):
        async with ActivityWriter(store, batch_size=10, flush_interval_s=60.0) as writer:
            for entry in (good[0], bad, *good[1:]):
                writer.record(entry.generation, entry.calls)
    assert sorted(g.id for g in (await store.list(limit=10)).generations) == [e.generation.id for e in good]
    assert await store.get("gen-good-1") == good[1]
    assert writer.stats.written == 3 and writer.stats.failed == 1
    lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
    assert len(lost) == 1 and "1 generation(s) lost (gen-bad)" in lost[0]


async def test_a_store_lost_while_writing_record_by_record_loses_the_rest_at_once(
    sqlite_store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    class VanishingStore(RecordingStore):
        """Refuses a batch's data, then stops taking anything."""

        async def write(self, batch: Sequence[ActivityEntry]) -> None:
            self.batches.append(len(batch))
            if len(batch) > 1:
                raise DataRefused("activity database error: value out of range")
            raise StoreUnavailable("activity database error: connection refused")

    store = VanishingStore(sqlite_store)
    with caplog.at_level(logging.WARNING, logger="openfusion.activity"):
        async with ActivityWriter(store, batch_size=10, flush_interval_s=60.0) as writer:
            for entry in entries_over_time(5):
                writer.record(entry.generation, entry.calls)
    assert store.batches == [5, 1]  # one record tried alone, then the store was gone: no wait per record
    assert writer.stats.failed == 5 and writer.stats.written == 0 and writer.stats.queued == 0
    assert "5 generation(s) lost" in caplog.text


async def test_a_batch_too_slow_to_write_whole_is_written_record_by_record(sqlite_store: SqliteStore) -> None:
    class SlowBatchStore(RecordingStore):
        """Takes a record at once, but a batch takes longer than the write's time limit."""

        async def write(self, batch: Sequence[ActivityEntry]) -> None:
            if len(batch) > 1:
                await asyncio.sleep(1.0)
            await super().write(batch)

    store = SlowBatchStore(sqlite_store)
    async with ActivityWriter(store, batch_size=10, flush_interval_s=60.0, write_timeout_s=0.2) as writer:
        for entry in entries_over_time(3):
            writer.record(entry.generation, entry.calls, hurry=True)
        await asyncio.wait_for(store.wait_for_batches([1, 1, 1]), timeout=5)
    assert writer.stats == WriterStats(written=3, dropped=0, failed=0, queued=0)
    assert await _stored_ids(sqlite_store) == ["gen-000", "gen-001", "gen-002"]


async def test_a_hanging_store_times_out_and_counts(sqlite_store: SqliteStore) -> None:
    store = HangingStore(sqlite_store)
    writer = ActivityWriter(store, batch_size=10, flush_interval_s=0.01, write_timeout_s=0.05)
    writer.start()
    entry = make_entry("gen-hang")
    writer.record(entry.generation, entry.calls)
    async with asyncio.timeout(5):
        await writer.aclose()
    assert writer.stats.failed == 1 and writer.stats.written == 0


class PartitionedStore(RecordingStore):
    """A database behind a network partition, as psycopg meets it: a write never gets an answer.

    Cancelled once, psycopg asks the server to cancel the query and waits for that (~10 s here unanswered);
    cancelled again meanwhile, it closes the connection and ends at once.
    """

    def __init__(self, inner: SqliteStore) -> None:
        super().__init__(inner)
        self.cancellations = 0
        self.pings = 0

    async def write(self, batch: Sequence[ActivityEntry]) -> None:
        self.batches.append(len(batch))
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancellations += 1
            try:
                await asyncio.sleep(10)  # the cancel request, then the query, unanswered
            except asyncio.CancelledError:
                self.cancellations += 1  # the connection is closed, at once
                raise
            raise

    async def ping(self) -> None:
        self.pings += 1
        await asyncio.Event().wait()


async def test_close_with_a_deadline_abandons_a_store_that_does_not_answer(
    sqlite_store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = PartitionedStore(sqlite_store)
    # The write's own timeout far off: only the close's cancellations can end the write (and cancel it twice).
    writer = ActivityWriter(store, batch_size=2, flush_interval_s=60.0, write_timeout_s=600.0)
    told: list[bool] = []
    writer.start()
    for entry in entries_over_time(5):
        writer.record(entry.generation, entry.calls, on_written=told.append)
    async with asyncio.timeout(30):
        while not store.batches:  # noqa: ASYNC110 - the first batch is being written, the rest queued
            await asyncio.sleep(0.01)
    with caplog.at_level(logging.WARNING, logger="openfusion.activity"):
        await writer.aclose(timeout_s=0.2)
    # The deadline, then a second cancellation, which closes the connection at once: not psycopg's ~10 s wait for
    # the server after the first. Counted, not timed: a loaded machine may spend more than the deadline anywhere.
    assert store.batches == [2] and store.cancellations == 2 and store.pings == 0
    assert writer.stats == WriterStats(written=0, dropped=0, failed=5, queued=0) and writer.stats.lost == 5
    assert told == [False] * 5
    [warning] = [r for r in caplog.records if r.name == "openfusion.activity"]
    assert "5 generation(s) lost" in warning.getMessage() and warning.exc_info is None


async def test_while_closing_a_write_that_times_out_ends_the_flush_without_a_ping(
    sqlite_store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = PartitionedStore(sqlite_store)
    writer = ActivityWriter(store, batch_size=2, flush_interval_s=60.0, write_timeout_s=0.05)
    for entry in entries_over_time(5):
        writer.record(entry.generation, entry.calls)
    with caplog.at_level(logging.WARNING, logger="openfusion.activity"):
        async with asyncio.timeout(2):
            await writer.aclose(timeout_s=1.5)
    # One batch tried: the store did not answer, so neither a ping nor the other batches were waited for.
    assert store.batches == [2] and store.pings == 0
    assert writer.stats.failed == 5 and writer.stats.queued == 0
    [warning] = [r for r in caplog.records if r.name == "openfusion.activity"]
    assert "5 generation(s) lost" in warning.getMessage()


async def test_close_with_a_deadline_writes_everything_when_the_store_answers(
    sqlite_store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = RecordingStore(sqlite_store)
    writer = ActivityWriter(store, batch_size=2, flush_interval_s=60.0)
    writer.start()
    for entry in entries_over_time(5):
        writer.record(entry.generation, entry.calls)
    with caplog.at_level(logging.WARNING, logger="openfusion.activity"):
        await writer.aclose(timeout_s=5.0)
    assert store.batches == [2, 2, 1] and writer.stats.written == 5 and writer.stats.lost == 0
    assert len(await _stored_ids(sqlite_store)) == 5
    assert not caplog.records


async def test_close_with_a_deadline_writes_a_backlog_longer_than_it_while_the_store_takes_it_in(
    sqlite_store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The deadline is for a store that does not answer: each batch here takes under half of it, all of them more
    than it, and every record is written.

    Each write takes 0.8 s of the 2 s, the store's own write running within that time rather than after it: a write
    misses the deadline only if the loop or SQLite waits 1.2 s for a turn. (With writes of 0.15 s and a deadline of
    0.2 s, a loaded machine had the first write miss it, and the whole backlog counted as lost.)"""
    deadline_s, hold_s = 2.0, 0.8

    class SlowStore(RecordingStore):
        async def write(self, batch: Sequence[ActivityEntry]) -> None:
            await asyncio.gather(asyncio.sleep(hold_s), super().write(batch))

    store = SlowStore(sqlite_store)
    writer = ActivityWriter(store, batch_size=2, flush_interval_s=60.0)
    writer.start()
    for entry in entries_over_time(6):
        writer.record(entry.generation, entry.calls)
    with caplog.at_level(logging.WARNING, logger="openfusion.activity"):
        started = asyncio.get_running_loop().time()
        await writer.aclose(timeout_s=deadline_s)
        took = asyncio.get_running_loop().time() - started
    assert took > deadline_s  # the flush outlasted the deadline (3 writes of 0.8 s at least)...
    assert store.batches == [2] * 3 and writer.stats.written == 6 and writer.stats.lost == 0  # ...and lost nothing
    assert len(await _stored_ids(sqlite_store)) == 6
    assert not caplog.records


async def test_full_queue_drops_and_counts_without_blocking(sqlite_store: SqliteStore) -> None:
    gate = asyncio.Event()

    class SlowStore(RecordingStore):
        async def write(self, batch: Sequence[ActivityEntry]) -> None:
            await gate.wait()
            await super().write(batch)

    settings = ActivitySettings(queue_size=3, batch_size=1, flush_interval_s=0.01)
    writer = ActivityWriter.from_settings(SlowStore(sqlite_store), settings)
    writer.start()
    results = [writer.record(e.generation, e.calls) for e in entries_over_time(5)]
    assert results == [True, True, True, False, False]
    assert writer.stats.dropped == 2 and writer.stats.queued == 3
    gate.set()
    await writer.aclose()
    assert writer.stats.written == 3
    assert await _stored_ids(sqlite_store) == ["gen-000", "gen-001", "gen-002"]


async def test_records_that_come_while_closing_are_written(sqlite_store: SqliteStore) -> None:
    """Requests cancelled at shutdown record themselves while the writer drains: nothing is dropped."""
    gate, at_gate = asyncio.Event(), asyncio.Event()

    class GatedStore(RecordingStore):
        async def write(self, batch: Sequence[ActivityEntry]) -> None:
            at_gate.set()
            await gate.wait()
            await super().write(batch)

    store = GatedStore(sqlite_store)
    writer = ActivityWriter(store, batch_size=10, flush_interval_s=60.0)
    writer.start()
    first, late = make_entry("gen-first"), make_entry("gen-late")
    writer.record(first.generation, first.calls)
    closing = asyncio.create_task(writer.aclose())
    async with asyncio.timeout(30):
        await at_gate.wait()  # the writer is now draining, its first write held at the gate
    assert not closing.done()
    assert writer.record(late.generation, late.calls) is True
    gate.set()
    await closing
    assert await _stored_ids(sqlite_store) == ["gen-first", "gen-late"]
    assert writer.stats.written == 2 and writer.stats.dropped == 0


async def test_records_after_close_are_dropped(sqlite_store: SqliteStore) -> None:
    writer = ActivityWriter(sqlite_store)
    writer.start()
    await writer.aclose()
    entry = make_entry("gen-late")
    assert writer.record(entry.generation, entry.calls) is False
    assert writer.stats.dropped == 1
    await writer.aclose()  # a second close is harmless


@pytest.mark.parametrize("store_content", [False, True])
async def test_content_is_kept_only_when_turned_on(sqlite_store: SqliteStore, store_content: bool) -> None:
    entry = make_entry("gen-content", content=True)
    async with ActivityWriter(sqlite_store, store_content=store_content) as writer:
        writer.record(entry.generation, entry.calls)
    loaded = await sqlite_store.get("gen-content")
    assert loaded is not None
    assert loaded.generation.has_content is store_content
    if store_content:
        assert loaded == entry
    else:
        assert loaded.generation == entry.generation.without_content()
        assert loaded.calls == entry.calls  # metadata is always kept


async def test_each_waiter_is_told_once_whether_its_record_reached_the_store(sqlite_store: SqliteStore) -> None:
    store = FailingStore(sqlite_store, failures=1)
    writer = ActivityWriter(store, batch_size=2, flush_interval_s=60.0, queue_size=5)
    told: dict[str, list[bool]] = {}
    entries = entries_over_time(6)
    writer.start()
    for entry in entries[:5]:
        # What a spend reservation does: its cost is counted by the store only once it is there.
        assert writer.record(entry.generation, entry.calls, on_written=told.setdefault(entry.generation.id, []).append)
    dropped = entries[5]  # over the queue's bound: refused now, and its waiter is never called
    assert writer.record(dropped.generation, on_written=told.setdefault(dropped.generation.id, []).append) is False
    await writer.aclose()
    assert store.batches == [2, 2, 1]  # the first batch hits the outage
    assert told == {
        "gen-000": [False],
        "gen-001": [False],
        "gen-002": [True],
        "gen-003": [True],
        "gen-004": [True],
        "gen-005": [],
    }


class CountedDraft:
    """A record handed over unbuilt (`ActivityWriter.enqueue`): it counts when the writer builds it."""

    def __init__(self, entry: ActivityEntry, *, broken: bool = False) -> None:
        self.entry, self.broken, self.builds = entry, broken, 0

    @property
    def generation_id(self) -> str:
        return self.entry.generation.id

    def build(self) -> ActivityEntry:
        self.builds += 1
        if self.broken:
            raise ValueError("a field out of range")
        return self.entry


async def test_a_draft_is_built_in_its_batch_not_when_it_is_queued(sqlite_store: SqliteStore) -> None:
    store = RecordingStore(sqlite_store)
    async with ActivityWriter(store, batch_size=100, flush_interval_s=0.2) as writer:
        drafts = [CountedDraft(entry) for entry in entries_over_time(3)]
        for draft in drafts:
            assert writer.enqueue(draft) is True
        for _ in range(5):  # the writer runs meanwhile, but the batch is still gathering
            await asyncio.sleep(0)
        assert [d.builds for d in drafts] == [0, 0, 0] and store.batches == []
        await store.wait_for_batches([3])
        assert [d.builds for d in drafts] == [1, 1, 1]
    assert await _stored_ids(sqlite_store) == ["gen-000", "gen-001", "gen-002"]


async def test_a_draft_that_fails_to_build_costs_only_itself(
    sqlite_store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = RecordingStore(sqlite_store)
    told: dict[str, list[bool]] = {}
    entries = entries_over_time(3)
    drafts = [CountedDraft(entry, broken=entry.generation.id == "gen-001") for entry in entries]
    with caplog.at_level(logging.ERROR, logger="openfusion.activity"):
        async with ActivityWriter(store, batch_size=100, flush_interval_s=60.0) as writer:
            for draft in drafts:
                on_written = told.setdefault(draft.generation_id, []).append
                assert writer.enqueue(draft, on_written=on_written, hurry=True) is True
            await store.wait_for_batches([2])
            assert writer.stats.failed == 1 and writer.stats.queued == 0
    assert told == {"gen-000": [True], "gen-001": [False], "gen-002": [True]}
    assert await _stored_ids(sqlite_store) == ["gen-000", "gen-002"]
    assert any("gen-001" in r.getMessage() and "not built" in r.getMessage() for r in caplog.records)


async def test_a_batch_of_drafts_that_all_fail_to_build_writes_nothing(sqlite_store: SqliteStore) -> None:
    store = RecordingStore(sqlite_store)
    broken = CountedDraft(make_entry("gen-broken"), broken=True)
    lost = asyncio.Event()
    async with ActivityWriter(store, flush_interval_s=60.0) as writer:
        assert writer.enqueue(broken, on_written=lambda ok: ok or lost.set(), hurry=True) is True
        await asyncio.wait_for(lost.wait(), timeout=5)
        later = make_entry("gen-later")  # the writer carries on
        writer.record(later.generation, later.calls, hurry=True)
        await store.wait_for_batches([1])
    assert broken.builds == 1 and store.batches == [1]  # no empty write for the batch that had nothing left
    assert await _stored_ids(sqlite_store) == ["gen-later"]


class StuckRecordsStore(RecordingStore):
    """Answers pings and writes, but a write with any of `stuck` in it fails as a statement past the database's
    time limit does (not an error about the data); `down` makes every write fail so."""

    def __init__(self, inner: SqliteStore, *, stuck: set[str]) -> None:
        super().__init__(inner)
        self.stuck = stuck
        self.down = False
        self.tries: list[list[str]] = []  # every write asked for, by its ids
        self.tried = asyncio.Event()  # set as each write asked for ends

    async def write(self, batch: Sequence[ActivityEntry]) -> None:
        ids = [entry.generation.id for entry in batch]
        self.tries.append(ids)
        try:
            if self.down or self.stuck & set(ids):
                raise StoreUnavailable("activity database error: canceling statement due to statement timeout")
            await super().write(batch)
        finally:
            self.tried.set()

    async def until(self, condition: Callable[[], bool], *, timeout_s: float = 5.0) -> None:
        """Wait, write by write, until `condition()` holds."""
        async with asyncio.timeout(timeout_s):
            while not condition():
                self.tried.clear()
                await self.tried.wait()


async def test_records_that_keep_failing_alike_while_others_are_written_are_set_aside(
    sqlite_store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Two such records queued together, before the rest: the rest is written, and each of them is set aside after
    the same number of tries, each logged by its id; the writer carries on."""
    store = StuckRecordsStore(sqlite_store, stuck={"gen-001", "gen-002"})
    entries = entries_over_time(6)
    told: dict[str, list[bool]] = {}
    with caplog.at_level(logging.WARNING, logger="openfusion.activity"):
        async with ActivityWriter(store, batch_size=10, flush_interval_s=0.01) as writer:
            for entry in entries:
                writer.record(entry.generation, entry.calls, on_written=told.setdefault(entry.generation.id, []).append)

            def settled() -> bool:
                if all(told.values()):
                    return True
                later = make_entry(f"gen-later-{len(store.tries)}")  # traffic goes on: a record per write
                writer.record(later.generation, later.calls)
                return False

            await store.until(settled, timeout_s=10)
            stats = writer.stats
    assert told == {
        "gen-000": [True], "gen-001": [False], "gen-002": [False], "gen-003": [True], "gen-004": [True],
        "gen-005": [True],
    }  # fmt: skip
    assert stats.set_aside == 2 and stats.failed == 2 and stats.dropped == 0
    for stuck in ("gen-001", "gen-002"):
        assert [ids for ids in store.tries if ids == [stuck]], "tried alone before being set aside"
    assert {"gen-000", "gen-003", "gen-004", "gen-005"} <= set(await _stored_ids(sqlite_store))
    set_aside = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert len(set_aside) == 2 and "gen-001" in set_aside[0] + set_aside[1] and "gen-002" in set_aside[0] + set_aside[1]
    assert "after 3 failed writes" in set_aside[0]


async def test_nothing_is_set_aside_while_the_store_writes_nothing_however_long(
    sqlite_store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database answers pings but takes no write (read-only, full) for many more tries than a record is
    given: every record stays queued, and is written once it does."""
    monkeypatch.setattr("openfusion.activity.writer._FIRST_RETRY_S", 0.01)
    monkeypatch.setattr("openfusion.activity.writer._MAX_RETRY_S", 0.02)
    store = StuckRecordsStore(sqlite_store, stuck=set())
    store.down = True
    told: list[bool] = []
    async with ActivityWriter(store, batch_size=10, flush_interval_s=0.01) as writer:
        for entry in entries_over_time(5):
            writer.record(entry.generation, entry.calls, on_written=told.append)
        await store.until(lambda: len(store.tries) >= 40)  # many passes, record by record too
        assert [ids for ids in store.tries if len(ids) == 1], "the records were tried one by one"
        assert writer.stats == WriterStats(written=0, dropped=0, failed=0, queued=5) and told == []
        store.down = False
        await store.until(lambda: len(told) == 5)
    assert told == [True] * 5 and writer.stats == WriterStats(written=5, dropped=0, failed=0, queued=0)
    assert await _stored_ids(sqlite_store) == [f"gen-{i:03d}" for i in range(5)]


async def test_a_record_that_failed_while_others_were_written_is_written_once_it_can_be(
    sqlite_store: SqliteStore,
) -> None:
    """Fewer failures than it is given: the record is written, nothing set aside."""
    store = StuckRecordsStore(sqlite_store, stuck={"gen-001"})
    told: dict[str, list[bool]] = {}
    async with ActivityWriter(store, batch_size=10, flush_interval_s=0.01) as writer:
        for entry in entries_over_time(3):
            writer.record(entry.generation, entry.calls, on_written=told.setdefault(entry.generation.id, []).append)
        await store.until(lambda: bool(told["gen-000"] and told["gen-002"]))
        assert told["gen-001"] == [] and writer.stats.queued == 1  # failed once: queued again
        store.stuck.clear()  # the lock it waited for is gone
        await store.until(lambda: bool(told["gen-001"]))
    assert told == {"gen-000": [True], "gen-001": [True], "gen-002": [True]}
    assert writer.stats == WriterStats(written=3, dropped=0, failed=0, queued=0, set_aside=0)


async def test_a_lone_record_that_keeps_failing_is_set_aside_with_no_other_traffic(
    sqlite_store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    """No record comes after it: the store, asked to write the last record it took again, does, so each failure
    counts; the record is set aside after 3, not tried again and again with the outage's wait."""
    store = StuckRecordsStore(sqlite_store, stuck={"gen-stuck"})
    told: dict[str, list[bool]] = {}
    with caplog.at_level(logging.WARNING, logger="openfusion.activity"):
        async with ActivityWriter(store, batch_size=10, flush_interval_s=0.01) as writer:
            for generation_id in ("gen-good", "gen-stuck"):
                entry = make_entry(generation_id)
                writer.record(entry.generation, entry.calls, on_written=told.setdefault(generation_id, []).append)
                await store.until(lambda: bool(told["gen-good"]))  # written alone, before the stuck one comes
            await store.until(lambda: bool(told["gen-stuck"]), timeout_s=10)
            stats = writer.stats
    assert told == {"gen-good": [True], "gen-stuck": [False]}
    assert stats == WriterStats(written=1, dropped=0, failed=1, queued=0, set_aside=1)
    assert [ids for ids in store.tries if ids == ["gen-stuck"]] == [["gen-stuck"]] * 3
    assert store.tries.count(["gen-good"]) == 1 + 3  # written, then written again after each failure
    assert await _stored_ids(sqlite_store) == ["gen-good"]
    [warning] = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert "gen-stuck" in warning and "after 3 failed writes" in warning


async def test_a_lone_record_is_not_set_aside_while_the_store_writes_nothing_however_long(
    sqlite_store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record was written before the store stopped writing (read-only, full): written again, it fails too, so no
    failure counts; the lone record stays queued, and is written once the store takes writes."""
    monkeypatch.setattr("openfusion.activity.writer._FIRST_RETRY_S", 0.01)
    monkeypatch.setattr("openfusion.activity.writer._MAX_RETRY_S", 0.02)
    store = StuckRecordsStore(sqlite_store, stuck=set())
    told: dict[str, list[bool]] = {}
    async with ActivityWriter(store, batch_size=10, flush_interval_s=0.01) as writer:
        for generation_id in ("gen-good", "gen-later"):
            entry = make_entry(generation_id)
            writer.record(entry.generation, entry.calls, on_written=told.setdefault(generation_id, []).append)
            await store.until(lambda: bool(told["gen-good"]))
            store.down = True
        await store.until(lambda: store.tries.count(["gen-later"]) >= 10)  # many more tries than it is given
        assert store.tries.count(["gen-good"]) > 5  # the store was asked to write the last record again: it did not
        assert writer.stats == WriterStats(written=1, dropped=0, failed=0, queued=1) and told["gen-later"] == []
        store.down = False
        await store.until(lambda: bool(told["gen-later"]))
    assert told == {"gen-good": [True], "gen-later": [True]}
    assert writer.stats == WriterStats(written=2, dropped=0, failed=0, queued=0, set_aside=0)
