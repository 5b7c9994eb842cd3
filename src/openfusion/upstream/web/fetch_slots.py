"""Turns at a worker's fetch client: a request's fetches, and a client key's across all its requests, are capped.

The fetch client has a fixed number of connections for every request of the worker. A page that trickles holds
one until its fetch times out, so without these caps one request, or one key sending several, could hold them
all and keep every other key's research waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class FetchSlots:
    """The turns one request's fetches take (see Turn.take): one of the request's own, then one of its key's."""

    request: asyncio.Semaphore
    key: asyncio.Semaphore


class Turn:
    """One fetch's wait for its turns: whose it had to wait for, for how long, and whether it still waits."""

    def __init__(self) -> None:
        self.waited_for: Literal["request", "key"] | None = None
        self.waiting = False
        self.waited_s = 0.0

    async def take(self, slots: FetchSlots, held: contextlib.AsyncExitStack) -> None:
        """Take a turn of the request's, then one of its key's, given back when `held` closes. In that order: a
        fetch waiting for its request's turn never holds one of its key's, which other requests could use."""
        started = time.monotonic()
        order: tuple[tuple[Literal["request", "key"], asyncio.Semaphore], ...] = (
            ("request", slots.request),
            ("key", slots.key),
        )
        for whose, semaphore in order:
            if semaphore.locked():
                self.waited_for = whose
            self.waiting = True
            await held.enter_async_context(semaphore)
            self.waiting = False
        self.waited_s = time.monotonic() - started


class KeyFetchSlots:
    """Per client key (its name; None for the one anonymous client of a server without keys), the fetches all its
    requests in this worker may have under way at once. Keys are configured, so this holds one semaphore per key."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._by_key: dict[str | None, asyncio.Semaphore] = {}

    def of(self, key: str | None) -> asyncio.Semaphore:
        """The turns one key's fetches share."""
        slots = self._by_key.get(key)
        if slots is None:
            slots = self._by_key[key] = asyncio.Semaphore(self.per_key)
        return slots
