"""The background writer: requests enqueue records without waiting; one task batches them into the store.

A store that cannot take a write (down, restarting, cut off, read-only, locked, full) keeps its records queued: they
are written when it can. Only a record whose data the store refuses is lost, alone; and one that keeps failing
otherwise while the store writes other records (past a statement time limit of the database, say) is set aside
after a few tries instead of holding the queue. A record that fails alone, with no other record to write, is no
exception: the store is asked to write again the last record it took, and when it does, the failure counts.

A request may hand over its record unbuilt (`Draft`): the writer builds it with the rest of its batch, off
the request's path. The writer wakes once per batch, not once per record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from openfusion.activity.cancellation import cancel_until_done
from openfusion.activity.config import ActivitySettings
from openfusion.activity.records import ActivityEntry, CallRecord, GenerationRecord, Writable
from openfusion.activity.sql import without_content
from openfusion.activity.store import ActivityStore, DataRefused, StoreUnavailable

log = logging.getLogger("openfusion.activity")

# A store that does not answer is tried again after this long, doubling up to the most while the outage lasts.
_FIRST_RETRY_S = 0.5
_MAX_RETRY_S = 10.0
# A record that failed this many tries, each in a pass where another record was written, is set aside (lost, logged,
# counted): the store takes writes, just not this one. While no write succeeds (an outage), nothing is set aside. A
# pass with no other record to write writes the last one written again, to tell the two apart (`_takes_writes`).
SET_ASIDE_AFTER = 3
# Written record by record, a failure before any record was written, or this many in a row after, say the store
# takes no write now: the pass stops there (each failure may have taken the write's time limit).
_FAILURES_IN_A_ROW = 2


class Draft(Protocol):
    """A generation's record, built only when the writer takes it into a batch."""

    @property
    def generation_id(self) -> str: ...

    def build(self) -> Writable:
        """The record as it stood when it was handed over (its records, or the rows made straight from it)."""
        ...


class _Built:
    """A record handed over already built."""

    __slots__ = ("entry",)

    def __init__(self, entry: Writable) -> None:
        self.entry = entry

    @property
    def generation_id(self) -> str:
        return self.entry.generation_id

    def build(self) -> Writable:
        return self.entry


@dataclass(frozen=True)
class WriterStats:
    """Counters of generations: written to the store, dropped (queue full or closed), failed (store error; of
    which `set_aside`: failed again and again while the store wrote other records)."""

    written: int
    dropped: int
    failed: int
    queued: int
    set_aside: int = 0

    @property
    def lost(self) -> int:
        """Records that never reached the store, whatever the reason (`openfusion_activity_dropped`)."""
        return self.dropped + self.failed


class ActivityWriter:
    """Queues activity off the request's hot path and writes it in batches; a store outage never reaches a request.

    What a store could not take stays queued (within `queue_size`) and is tried again, waiting 0.5 s to 10 s
    between tries, until the store takes it; a record whose data the store refuses is counted as lost, alone, and
    so is one that failed `SET_ASIDE_AFTER` tries while the store wrote other records (set aside).
    """

    def __init__(
        self,
        store: ActivityStore,
        *,
        store_content: bool = False,
        queue_size: int = 10_000,
        batch_size: int = 100,
        flush_interval_s: float = 0.5,
        write_timeout_s: float = 10.0,
        confirms: bool = False,
    ) -> None:
        self._store = store
        self._store_content = store_content
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._write_timeout_s = write_timeout_s
        # Responses end only once their record is in the store (Ledger.commit): a killed process loses none.
        self.confirms = confirms
        self._hurry = False  # a record is awaited: write what is queued now, without waiting for the interval
        self._queue: deque[Draft] = deque()  # bounded in enqueue(), by `_pending`
        # Set by the first record of a batch, and by whatever cuts the batch's wait short (a full batch, a
        # record awaited, aclose()): the writer sleeps through every other record.
        self._wake = asyncio.Event()
        self._pending = 0  # queued or being written
        self._task: asyncio.Task[None] | None = None
        self._closing = False  # aclose() was called: write what is queued, and what still comes, then stop
        self._stopped = False  # the writing is over: a record now could never reach the store
        # While closing, a write timed out: the store does not answer, so nothing more is tried (see aclose()).
        self._unreachable = False
        self._unwritten = 0  # records of abandoned writes, not counted yet: aclose() counts them with the queue
        # The store did not take a write: what it did not take went back to the front of the queue, to be
        # tried again after this many seconds (0: the store answers), growing while the outage lasts.
        self._retry_in = 0.0
        self._closed = asyncio.Event()  # aclose() was called: a wait before the next try ends at once
        self._written = self._dropped = self._failed = self._set_aside = 0
        # Records that failed, for a reason not their data, in a pass where other records were written: how often.
        self._strikes: dict[str, int] = {}
        # The record the store took last: written again when a record fails with no other to write (`_takes_writes`).
        self._last_written: Writable | None = None
        # Told once whether a generation reached the store (a spend cap's reservation waits for it), by id.
        self._on_written: dict[str, Callable[[bool], None]] = {}

    @classmethod
    def from_settings(cls, store: ActivityStore, settings: ActivitySettings, *, shared: bool = False) -> ActivityWriter:
        """A writer configured by the `[activity]` section (`shared`: the store is PostgreSQL, for replicas)."""
        confirms = settings.record_before_end
        return cls(
            store,
            store_content=settings.store_content,
            queue_size=settings.queue_size,
            batch_size=settings.batch_size,
            flush_interval_s=settings.flush_interval_s,
            write_timeout_s=settings.write_timeout_s,
            confirms=shared if confirms is None else confirms,
        )

    @property
    def write_timeout_s(self) -> float:
        """How long one write may take before it counts as failed."""
        return self._write_timeout_s

    @property
    def stats(self) -> WriterStats:
        """The counters so far (for logs and metrics)."""
        return WriterStats(self._written, self._dropped, self._failed, self._pending, self._set_aside)

    def start(self) -> None:
        """Start the background task (call from the running event loop, e.g. the app's lifespan)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="activity-writer")

    @property
    def stores_content(self) -> bool:
        """Whether records keep their content (panel answers, analysis, final answer) or only metadata."""
        return self._store_content

    def record(
        self,
        generation: GenerationRecord,
        calls: Iterable[CallRecord] = (),
        *,
        on_written: Callable[[bool], None] | None = None,
        hurry: bool = False,
    ) -> bool:
        """Enqueue one generation without waiting; False when it was dropped (queue full or writer stopped).

        `hurry`: someone waits for this record, so the writer writes what is queued at once instead of
        gathering a batch for `flush_interval_s` (records arriving meanwhile join the next write).

        Call it on the event loop's thread (any route or pipeline code is); it never awaits, raises or blocks.
        While aclose() drains the queue, records are still taken: requests cancelled at shutdown record
        themselves then. `on_written(True)` is called once the generation is in the store, `on_written(False)`
        once it is lost; never when this returns False.
        """
        return self.enqueue(_Built(ActivityEntry(generation, tuple(calls))), on_written=on_written, hurry=hurry)

    def enqueue(self, draft: Draft, *, on_written: Callable[[bool], None] | None = None, hurry: bool = False) -> bool:
        """record(), for a record the writer builds when it takes it into a batch (`draft.build()`).

        A draft that fails to build is logged and counts as failed (`on_written(False)`); the rest of its
        batch is written.
        """
        if self._stopped or self._pending >= self._queue_size:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning("activity queue full or closed: %d generation(s) dropped so far", self._dropped)
            return False
        self._pending += 1
        if on_written is not None:
            self._on_written[draft.generation_id] = on_written
        self._hurry = self._hurry or hurry
        queue = self._queue
        queue.append(draft)
        if len(queue) == 1 or hurry or len(queue) >= self._batch_size:
            self._wake.set()
        return True

    async def aclose(self, *, timeout_s: float | None = None) -> None:
        """Write everything queued (and recorded meanwhile), then stop the task (the store stays open).

        `timeout_s` bounds each stretch of the flush in which nothing reaches the store: a shutdown must end
        even when the store does not answer (a network partition drops packets, it refuses nothing), but a
        long backlog that a working store takes in keeps being written. Once a stretch passes without a
        record written, the write still running is abandoned, its connection closed; it and the queue are
        counted as lost, in one warning. While closing, a write that times out ends the flush the same way at
        once: no other write.
        """
        if not self._closing:
            self._closing = True
            self._closed.set()
            self._wake.set()
            self.start()  # never started: the task drains the queue all the same, so a clean stop loses nothing
        task = self._task
        assert task is not None
        while not task.done():
            written = self._written
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(task)
            except TimeoutError:
                if self._written == written:  # nothing reached the store meanwhile: it does not answer
                    await _abandon(task)
        self._give_up()

    async def __aenter__(self) -> ActivityWriter:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _run(self) -> None:
        try:
            while (self._queue or not self._closing) and not self._unreachable:
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()  # the first record, or aclose()
                    continue
                if self._retry_in:
                    await self._wait_to_retry()
                await self._gather()
                if batch := self._take():  # empty when every record in it failed to build
                    await self._flush(batch)
        finally:
            self._stopped = True

    async def _gather(self) -> None:
        """Wait until the batch is full, a record is awaited, aclose() was called, or the interval passed."""
        deadline = asyncio.get_running_loop().time() + self._flush_interval_s
        while not (self._closing or self._hurry or len(self._queue) >= self._batch_size):
            self._wake.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()
            except TimeoutError:
                return

    def _take(self) -> list[Writable]:
        """Up to a batch of the queued records, built; one that fails to build is counted as lost, alone."""
        queue, batch = self._queue, []
        while queue and len(batch) < self._batch_size:
            draft = queue.popleft()
            try:
                entry = draft.build()
            except Exception:  # a bug in one record must not cost the batch, nor stop the writer
                self._pending -= 1
                self._failed += 1
                log.exception("activity record %s not built (%d lost so far)", draft.generation_id, self._failed)
                self._tell_id(draft.generation_id, written=False)
                continue
            if not self._store_content:
                entry = without_content(entry)
            batch.append(entry)
        if not queue:
            self._hurry = False  # every record awaited is in this batch
        return batch

    async def _flush(self, batch: list[Writable]) -> None:
        counted = self._written + self._failed
        kept = 0  # records put back in the queue: still pending, their waiters not told yet
        try:
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any store failure: count and log, never reach a request
                if self._ends_the_close(exc, len(batch)):
                    return
                refused = _refuses_the_data(exc)
                if len(batch) > 1 and (refused or isinstance(exc, TimeoutError) or await self._answers()):
                    # One bad record must not cost the rest, nor a batch too slow to write whole its records; nor
                    # one the store fails alone, while it answers (past a statement time limit), hold the queue.
                    kept = await self._write_each(batch)
                elif refused:
                    self._lost(batch, exc)
                elif await self._takes_writes():  # a lone record the store fails while it writes: counted
                    kept = self._strike(batch, exc)
                else:  # the store cannot write now (down, read-only, locked, full)
                    kept = self._keep_for_later(batch, exc)
            else:
                self._written += len(batch)
                self._last_written = batch[-1]
                self._forgive(batch)
                self._tell(batch, written=True)
                self._recovered()
        except asyncio.CancelledError:  # aclose() stopped waiting for the store's write: the rest is lost
            self._unwritten += len(batch) - (self._written + self._failed - counted)
            raise
        finally:
            self._pending -= len(batch) - kept
            if not kept:
                self._tell(batch, written=False)  # any not told yet: the write was cancelled

    async def _write(self, batch: list[Writable]) -> None:
        async with asyncio.timeout(self._write_timeout_s):
            await self._store.write(batch)

    def _ends_the_close(self, exc: Exception, unwritten: int) -> bool:
        """While closing, a write that timed out means the store does not answer: the flush ends there.

        Nothing more is tried (another write would only wait as long again): these `unwritten`
        records and the queue are left for aclose() to count as lost.
        """
        if not (self._closing and isinstance(exc, TimeoutError)):
            return False
        self._unreachable = True
        self._unwritten += unwritten
        return True

    async def _answers(self) -> bool:
        """Whether the store answers a ping now (within the write's time limit): a failed write was then not an
        outage's, or not only."""
        if self._closing:  # a shutdown does not try the records one by one for a store that failed a write
            return False
        try:
            async with asyncio.timeout(self._write_timeout_s):
                await self._store.ping()
        except Exception:
            return False
        return True

    async def _takes_writes(self) -> bool:
        """Whether the store writes now, though it failed a write with no other record to tell by: the last record it
        took, written again (the same copy replaces itself). Never known before any record was written, nor while
        closing (a shutdown does not wait for the store)."""
        last = self._last_written
        if last is None or self._closing:
            return False
        try:
            await self._write([last])
        except Exception:
            return False
        self._recovered()
        return True

    async def _write_each(self, batch: list[Writable]) -> int:
        """Write a failed batch record by record; a record refused alone is lost, logged by its id.

        A record that fails for another reason once the store has written another in this pass counts that failure
        against it (`_strike`), and the pass goes on. One such failure before any record was written, or two in a
        row after, end the pass (each may have taken the write's time limit): the store may take no write now, and
        what was not written waits for it, the records not tried yet first (so that when the failing ones are what
        fails, the next pass writes others before them, and counts their failures) — unless the store, asked to write
        the last record it took again, does: then the failure counts, and the others are tried next.

        Returns how many went back to the queue.
        """
        failing: list[Writable] = []  # failed in this pass for a reason not their data
        failure: Exception | None = None
        written = in_a_row = 0
        untried: list[Writable] = []
        for position, entry in enumerate(batch):
            try:
                await self._write([entry])
            except Exception as exc:
                if self._ends_the_close(exc, len(batch) - position + len(failing)):
                    return 0
                if _refuses_the_data(exc):
                    self._lost([entry], exc)
                    continue
                if self._closing:  # a shutdown does not wait for the store: one failure ends the pass
                    return self._keep_for_later([*failing, *batch[position:]], exc)
                failing.append(entry)
                failure = exc
                in_a_row += 1
                if in_a_row >= (_FAILURES_IN_A_ROW if written else 1):
                    untried = batch[position + 1 :]
                    break
            else:
                written += 1
                in_a_row = 0
                self._written += 1
                self._last_written = entry
                self._forgive([entry])
                self._tell([entry], written=True)
                self._recovered()
        if not failing:
            return 0
        assert failure is not None
        if not written:
            if not await self._takes_writes():  # nothing tells the store's failure from the records': an outage
                return self._keep_for_later([*untried, *failing], failure)
            # The store writes: the records not tried yet are tried next, at once.
            self._queue.extendleft(_Built(entry) for entry in reversed(untried))
            return len(untried) + self._strike(failing, failure)
        kept = self._strike(failing, failure)
        if untried:  # the pass ended on failures in a row: the store may have stopped taking writes
            kept += self._keep_for_later(untried, failure)
        return kept

    def _strike(self, entries: list[Writable], exc: Exception) -> int:
        """These records failed while the store wrote others (or the last one again): each `SET_ASIDE_AFTER`th time is
        its last.

        The others go to the back of the queue (the store takes writes: no wait), so the records queued meanwhile
        are written in whole batches before they are tried again. Returns how many went back.
        """
        kept = []
        for entry in entries:
            generation_id = entry.generation_id
            strikes = self._strikes.get(generation_id, 0) + 1
            if strikes < SET_ASIDE_AFTER:
                self._strikes[generation_id] = strikes
                kept.append(entry)
                continue
            self._strikes.pop(generation_id, None)
            self._set_aside += 1
            self._failed += 1
            self._tell([entry], written=False)
            log.warning(
                "activity record %s set aside after %d failed writes while the store wrote other records "
                "(%d set aside so far): %s",
                generation_id,
                strikes,
                self._set_aside,
                _described(exc),
            )
        self._queue.extend(_Built(entry) for entry in kept)
        return len(kept)

    def _forgive(self, entries: list[Writable]) -> None:
        """Written at last: these records' failures are forgotten."""
        if self._strikes:
            for entry in entries:
                self._strikes.pop(entry.generation_id, None)

    def _keep_for_later(self, entries: list[Writable], exc: Exception) -> int:
        """The store did not take a write: put these records back at the front of the queue, to be tried again.

        While closing they are lost instead (counted and logged): a shutdown does not wait for a store to come back.
        Returns how many were put back.
        """
        if self._closing:
            self._lost(entries, exc)
            return 0
        if not self._retry_in:
            why = _described(exc)
            log.warning("activity store did not take a write (%s): %d generation(s) kept queued until it does",
                        why, len(entries))  # fmt: skip
        self._retry_in = min(max(self._retry_in * 2, _FIRST_RETRY_S), _MAX_RETRY_S)
        self._queue.extendleft(_Built(entry) for entry in reversed(entries))
        return len(entries)

    async def _wait_to_retry(self) -> None:
        """Before trying a store that did not answer again: `_retry_in`, or less if aclose() is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._retry_in):
                await self._closed.wait()

    def _recovered(self) -> None:
        if self._retry_in:
            self._retry_in = 0.0
            log.warning("activity store takes writes again: %d generation(s) still queued", len(self._queue))

    def _tell(self, entries: list[Writable], *, written: bool) -> None:
        """Tell whoever waits on these generations whether they reached the store (each once)."""
        if not self._on_written:
            return
        for entry in entries:
            self._tell_id(entry.generation_id, written=written)

    def _tell_id(self, generation_id: str, *, written: bool) -> None:
        callback = self._on_written.pop(generation_id, None)
        if callback is not None:
            try:
                callback(written)
            except Exception:  # a waiter's bug must not stop the writer
                log.exception("an activity write callback failed")

    def _give_up(self) -> None:
        """Count what aclose() could not write as lost, in one warning: the abandoned writes and the queue."""
        queue = self._queue
        lost = self._unwritten + len(queue)
        if not lost:
            return
        self._pending -= len(queue)
        self._failed += lost
        self._unwritten = 0
        while queue:
            self._tell_id(queue.popleft().generation_id, written=False)
        log.warning(
            "activity store not written to in time at shutdown: %d generation(s) lost (%d lost in all)",
            lost,
            self._failed + self._dropped,
        )

    def _lost(self, entries: list[Writable], exc: Exception) -> None:
        self._failed += len(entries)
        self._forgive(entries)
        self._tell(entries, written=False)
        which = f" ({entries[0].generation_id})" if len(entries) == 1 else ""
        log.warning(
            "activity store write failed, %d generation(s) lost%s (%d so far): %s: %s",
            len(entries),
            which,
            self._failed,
            type(exc).__name__,
            exc,
        )


def _described(exc: Exception) -> str:
    """An error for the log: its type, and its message when it has one (a store's never holds a password)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _refuses_the_data(exc: Exception) -> bool:
    """Whether a write failed for the records it sent (written again, they would fail again), not for the store.

    The store's other errors (down, read-only, locked, full) and a write past its time limit pass with time; an
    error that is not the store's own (a value the driver cannot send) is the record's.
    """
    if isinstance(exc, DataRefused):
        return True
    return not isinstance(exc, (StoreUnavailable, TimeoutError, OSError))


async def _abandon(task: asyncio.Task[None]) -> None:
    """Cancel the writer's task and wait (about a second on an idle machine) until it has ended.

    Its write ends at once when cancelled, even while the database does not answer (`cancellation`).
    """
    if not await cancel_until_done(task):
        log.warning("the activity writer did not stop when cancelled")
