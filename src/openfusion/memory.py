"""Memory a burst of requests freed, given back to the system once the burst is over.

A burst of requests grows the C heap (request and answer bodies, prompts, the parsers' buffers); when it is
over, glibc keeps the freed pages for later, so the process's RSS stays at the burst's peak. `malloc_trim(0)`
hands whole free pages back (~1 ms for a 200 MiB heap). It is called from a housekeeping task that looks at the
number of requests in flight once a second, never per request: when that number has fallen to a quarter of a
peak at least `min_burst` above it, the burst is over, and once it has stayed there for `settle` readings (the
activity writer builds and writes the burst's records after its responses), the heap is trimmed once. A steady
load (its peak never `min_burst` above its level) is never trimmed. Where the C library has no `malloc_trim`
(musl, macOS), nothing runs.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

log = logging.getLogger("openfusion")

CHECK_EVERY_S = 1.0
MIN_BURST = 64  # requests in flight above the level they fell back to
SETTLE_CHECKS = 3  # readings the level stays down for before the trim


def malloc_trim() -> Callable[[], object] | None:
    """glibc's `malloc_trim(0)`, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class BurstTrimmer:
    """Trims the C heap once after each burst of requests, seen through `in_flight()` at each `check()`."""

    def __init__(
        self,
        in_flight: Callable[[], int],
        trim: Callable[[], object],
        *,
        min_burst: int = MIN_BURST,
        settle: int = SETTLE_CHECKS,
    ) -> None:
        self._in_flight = in_flight
        self._trim = trim
        self._min_burst = min_burst
        self._settle = settle
        self._peak = 0
        self._low = 0  # readings in a row since the burst fell
        self.trims = 0

    def check(self) -> bool:
        """Take one reading; trim (and start watching for the next peak) when a burst has been over for a while."""
        now = self._in_flight()
        if now > self._peak:
            self._peak, self._low = now, 0
            return False
        if self._peak - now < self._min_burst or now * 4 > self._peak:
            self._low = 0
            return False
        self._low += 1
        if self._low < self._settle:
            return False
        started = time.perf_counter()
        self._trim()
        self.trims += 1
        took_ms = (time.perf_counter() - started) * 1e3
        log.debug("burst of %d requests over: heap trimmed in %.2f ms", self._peak, took_ms)
        self._peak, self._low = now, 0
        return True

    async def run(self, every_s: float = CHECK_EVERY_S) -> None:
        """`check()` every `every_s` seconds, until cancelled."""
        while True:
            await asyncio.sleep(every_s)
            self.check()
