"""Daily spend caps: what was spent (the activity store) and what requests in flight hold against the cap.

Before anything is sent, a request under a cap reserves its worst-case cost: refused when today's
spend, plus the reservations of requests in flight, plus this estimate is over the cap. The check
and the reservation are one atomic step (in this process, or one Lua script in Redis), so
concurrent requests cannot all pass on the same reading. A reservation stays counted until the
request's cost is in the store: when the request ends it settles to the actual cost, which stays
counted until the activity writer has written it; a cost that stays unknown (a stream without
usage, a cancelled call) or a record that is lost keeps counting for the rest of the day — at the
estimate when unknown. Spend is read from the store before the reservation; a cost written after
that reading began is still counted from its reservation, so there is no moment when a cost is in
neither place. Overshoot is thus bounded by what estimates under-count.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol, runtime_checkable

# How long reading today's spend from the store may take: a reading older than this is read again. A cost
# written to the store stays counted from its reservation this long too, for readings begun before it.
READ_WINDOW_S = 30.0
# Float sums of many small costs must not refuse a request that fits the cap exactly.
_EPSILON = 1e-9


@runtime_checkable
class SpendSource(Protocol):
    """Where spend is recorded (the activity store)."""

    async def spent_today(self, key_name: str | None) -> float | None:
        """USD spent since 00:00 UTC by one key (None: by all traffic), or None when unknown."""


def seconds_until_utc_midnight(now: datetime | None = None) -> float:
    """Seconds until the daily spend resets (00:00 UTC)."""
    now = now or datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


def utc_day(now: datetime | None = None) -> str:
    """The UTC date spend is counted under (YYYY-MM-DD), as the store's `spent_today` counts it."""
    return (now or datetime.now(UTC)).astimezone(UTC).date().isoformat()


@dataclass(frozen=True)
class Refusal:
    """A reservation refused: what counted against the cap."""

    counted: float  # USD: spent, plus held by requests in flight, plus kept (unknown or lost costs)
    in_flight: float  # the part held by requests whose cost is not in the store yet


class Hold(Protocol):
    """A reservation's entry in a spend book."""

    def finish(self, amount: float, *, written: bool) -> None:
        """Settle to `amount`: written to the store (counted from here a little longer), or kept all day."""

    async def cancel(self) -> None:
        """Remove the entry: nothing was spent."""


class SpendBook(Protocol):
    """Where reservations live: this process, or Redis shared by every replica."""

    async def clock(self) -> float:
        """Now, on the clock reservations are stamped with (seconds); taken before reading today's spend."""

    async def reserve(
        self, bucket: str, *, day: str, cap: float, estimate: float, spent: float, read_at: float
    ) -> Reservation | Refusal | None:
        """Reserve `estimate` if spent + held + kept + estimate fits the cap; None when `read_at` is too old."""

    async def aclose(self) -> None:
        """Finish pending work and release connections."""


class Reservation:
    """One request's hold on its key's daily cap, from admission until its cost is in the store."""

    def __init__(self, estimate: float, hold: Hold) -> None:
        self.estimate = estimate
        self._hold = hold
        # reserved -> running (its ledger opened: upstream calls may follow) -> settled (ended) -> done
        self._state: Literal["reserved", "running", "settled", "done"] = "reserved"
        self._actual = 0.0

    @property
    def state(self) -> str:
        """Where the reservation is in its life."""
        return self._state

    def started(self) -> None:
        """The request is under way: from here it may spend."""
        if self._state == "reserved":
            self._state = "running"

    def settle(self, actual: float | None) -> None:
        """The request ended having cost `actual`; None (unknown): its estimate stays counted all day."""
        if self._state not in ("reserved", "running"):
            return
        if actual is None:
            self._state = "done"
            self._hold.finish(self.estimate, written=False)
        else:
            self._state, self._actual = "settled", actual

    def written(self, ok: bool) -> None:
        """The request's record reached the store (`ok`), or is lost, so its cost stays counted here all day."""
        if self._state != "settled":
            return
        self._state = "done"
        self._hold.finish(self._actual, written=ok)

    async def release(self) -> None:
        """At the end of the response: give back a reservation never used; one whose request never settled
        (it may have spent, nobody will say how much) keeps its estimate counted all day."""
        if self._state == "reserved":
            self._state = "done"
            await self._hold.cancel()
        elif self._state == "running":
            self._state = "done"
            self._hold.finish(self.estimate, written=False)


@dataclass
class _Day:
    """One bucket's reservations for one UTC day. Every step costs in proportion to what it touches."""

    day: str
    running: dict[str, float] = field(default_factory=dict)  # reservations of requests not yet in the store
    running_total: float = 0.0
    written: deque[tuple[float, float]] = field(default_factory=deque)  # (written at, cost), oldest first
    kept: float = 0.0  # costs the store will not count (unknown or lost), counted here until the day ends

    def drop(self, key: str) -> float | None:
        amount = self.running.pop(key, None)
        if amount is not None:
            # Float sums drift as amounts come and go: an empty book is exactly zero.
            self.running_total = self.running_total - amount if self.running else 0.0
        return amount

    def written_since(self, read_at: float) -> float:
        """Costs written to the store at or after `read_at` (newest first, stopping at the first older one)."""
        total = 0.0
        for written_at, amount in reversed(self.written):
            if written_at < read_at:
                break
            total += amount
        return total


class MemorySpendBook:
    """Reservations in this process (one event loop): enough for a single replica."""

    shared = False

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, read_window_s: float = READ_WINDOW_S) -> None:
        self._clock = clock
        self._window = read_window_s
        self._days: dict[str, _Day] = {}  # bucket -> its current day
        self._ids = itertools.count(1)

    async def clock(self) -> float:
        """This process's monotonic clock."""
        return self._clock()

    async def reserve(
        self, bucket: str, *, day: str, cap: float, estimate: float, spent: float, read_at: float
    ) -> Reservation | Refusal | None:
        """Check and reserve in one step (nothing awaits in between)."""
        now = self._clock()
        if now - read_at > self._window:
            return None
        book = self._days.get(bucket)
        if book is None or book.day != day:  # yesterday's reservations count towards yesterday only
            book = self._days[bucket] = _Day(day)
        while book.written and book.written[0][0] < now - self._window:
            book.written.popleft()  # in the store, and every reading still usable began after it got there
        in_flight = book.running_total + book.written_since(read_at)
        counted = spent + book.kept + in_flight
        if counted + estimate > cap + _EPSILON:
            return Refusal(counted, in_flight)
        key = str(next(self._ids))
        book.running[key] = estimate
        book.running_total += estimate
        return Reservation(estimate, _MemoryHold(self, book, key))

    def held(self, bucket: str) -> float:
        """USD held or kept against a bucket's cap today (for tests and metrics)."""
        book = self._days.get(bucket)
        return book.kept + book.running_total + sum(a for _, a in book.written) if book else 0.0

    async def aclose(self) -> None:
        """Nothing to close."""


class _MemoryHold:
    def __init__(self, owner: MemorySpendBook, book: _Day, key: str) -> None:
        self._owner, self._book, self._key = owner, book, key

    def finish(self, amount: float, *, written: bool) -> None:
        self._book.drop(self._key)
        if written:
            self._book.written.append((self._owner._clock(), amount))
        else:
            self._book.kept += amount

    async def cancel(self) -> None:
        self._book.drop(self._key)
