"""Limit counters: the Limiter protocol and the in-process implementation.

Requests per minute use a sliding window (at most N admitted requests in any 60 s span; refused
requests do not count). Concurrency uses slots that are given back when the response ends.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol


class Slot(Protocol):
    """One held unit of a concurrency limit."""

    async def release(self) -> None:
        """Give the slot back (idempotent)."""


class Limiter(Protocol):
    """Where limit counters live: this process, or Redis shared by every replica."""

    shared: bool

    async def hit(self, bucket: str, *, limit: int, window_s: float) -> float:
        """Count one request: 0 when admitted, else the seconds until one would be."""

    async def acquire(self, bucket: str, *, limit: int, kind: str = "fusion") -> Slot | None:
        """Take a slot of the `kind` limit ("fusion" runs, or "requests" of any kind), or None when all `limit` slots
        are held."""

    async def ping(self) -> None:
        """Raise when the counters cannot be reached."""

    async def aclose(self) -> None:
        """Release connections."""


class MemoryLimiter:
    """Counters in this process (one event loop): enough for a single replica."""

    shared = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._held: dict[str, int] = {}

    async def hit(self, bucket: str, *, limit: int, window_s: float) -> float:
        """Count one request in the sliding window."""
        now = self._clock()
        log = self._hits.setdefault(bucket, deque())
        while log and log[0] <= now - window_s:
            log.popleft()
        if len(log) < limit:
            log.append(now)
            return 0.0
        return log[0] + window_s - now

    async def acquire(self, bucket: str, *, limit: int, kind: str = "fusion") -> Slot | None:
        """Take a slot if fewer than `limit` are held."""
        bucket = _counted(bucket, kind)
        if self._held.get(bucket, 0) >= limit:
            return None
        self._held[bucket] = self._held.get(bucket, 0) + 1
        return _MemorySlot(self, bucket)

    def held(self, bucket: str, kind: str = "fusion") -> int:
        """How many slots of a bucket's `kind` limit are held."""
        return self._held.get(_counted(bucket, kind), 0)

    def _release(self, bucket: str) -> None:
        self._held[bucket] -= 1
        if not self._held[bucket]:
            del self._held[bucket]

    async def ping(self) -> None:
        """Always reachable."""

    async def aclose(self) -> None:
        """Nothing to close."""


class _MemorySlot:
    def __init__(self, limiter: MemoryLimiter, bucket: str) -> None:
        self._limiter = limiter
        self._bucket: str | None = bucket

    async def release(self) -> None:
        if self._bucket is not None:
            self._limiter._release(self._bucket)
            self._bucket = None


def _counted(bucket: str, kind: str) -> str:
    """Where a bucket's slots of one limit are counted (a fusion run's under the bucket's own name)."""
    return bucket if kind == "fusion" else f"{kind}|{bucket}"
