"""Turns at a worker's fetch client: a request's fetches, and a client key's across all its requests, are capped,
and the client's connections go round the keys fairly.

The fetch client has a fixed number of connections for every request of the worker. A page that trickles holds
one until its fetch times out, so without these caps one request, or one key sending several, could hold them
all and keep every other key's research waiting. When the connections are all in use, the next one freed goes to
the waiting key with the fewest fetches under way, not to whichever fetch asked first: keys that flood the client
cannot queue ahead of a key that has just arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal

# The connections of a worker's fetch client (build_fetch_client), which all its fetches share.
FETCH_CONNECTIONS = 64

Whose = Literal["request", "key", "connections"]


class SharedConnections:
    """A worker's fetch connections, taken in turns that are fair across client keys.

    While one is free and no fetch waits, a fetch takes it at once. When all are in use, a freed one goes to the
    waiting key with the fewest fetches under way (among equals, the key whose fetch has waited longest), so every
    key waiting gets its turn before a key already holding more gets another. A fetch cancelled while it waits
    leaves the queue, and one cancelled just as it was given a connection passes it on: none is lost.
    """

    def __init__(self, size: int = FETCH_CONNECTIONS) -> None:
        self.size = size
        self._free = size
        self._running: Counter[str | None] = Counter()  # per key, the connections its fetches hold
        # Per key (only keys with a fetch waiting), its waiting fetches in the order they came.
        self._waiting: dict[str | None, deque[tuple[int, asyncio.Future[None]]]] = {}
        self._arrivals = itertools.count()

    @property
    def free(self) -> int:
        """The connections no fetch holds right now."""
        return self._free

    def waiting(self, owner: str | None) -> int:
        """How many of `owner`'s fetches wait for a connection right now."""
        return len(self._waiting.get(owner, ()))

    def busy(self) -> bool:
        """Whether a fetch asking now would have to wait."""
        return self._free == 0 or bool(self._waiting)

    @contextlib.asynccontextmanager
    async def turn(self, owner: str | None) -> AsyncIterator[None]:
        """Hold one connection for a fetch of `owner`'s (a client key's name; None without keys)."""
        await self._acquire(owner)
        try:
            yield
        finally:
            self._release(owner)

    async def _acquire(self, owner: str | None) -> None:
        if not self.busy():
            self._take(owner)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(owner, deque()).append((next(self._arrivals), waiter))
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release(owner)  # given a connection as it was cancelled: the next fetch waiting gets it
            else:
                self._forget(owner, waiter)
            raise

    def _take(self, owner: str | None) -> None:
        self._free -= 1
        self._running[owner] += 1

    def _release(self, owner: str | None) -> None:
        self._free += 1
        self._running[owner] -= 1
        if self._running[owner] <= 0:
            del self._running[owner]
        self._hand_on()

    def _hand_on(self) -> None:
        """Give free connections to waiting fetches: each to the key with the fewest under way."""
        while self._free > 0 and self._waiting:
            owner = min(self._waiting, key=lambda key: (self._running[key], self._waiting[key][0][0]))
            queue = self._waiting[owner]
            _, waiter = queue.popleft()
            if not queue:
                del self._waiting[owner]
            if not waiter.done():  # one cancelled, not yet out of the queue, is passed over
                self._take(owner)
                waiter.set_result(None)

    def _forget(self, owner: str | None, waiter: asyncio.Future[None]) -> None:
        queue = self._waiting.get(owner)
        if queue is None:
            return
        for entry in queue:
            if entry[1] is waiter:
                queue.remove(entry)
                break
        if not queue:
            del self._waiting[owner]


@dataclass(frozen=True)
class FetchSlots:
    """The turns one request's fetches take (see Turn.take): one of the request's own, then one of its key's, then
    one of the worker's connections, shared fairly with the other keys' fetches."""

    request: asyncio.Semaphore
    key: asyncio.Semaphore
    connections: SharedConnections
    owner: str | None  # the client key the request was made with (None: no keys)


class Turn:
    """One fetch's wait for its turns: whose it had to wait for, for how long, and whether it still waits."""

    def __init__(self) -> None:
        self.waited_for: Whose | None = None
        self.waiting = False
        self.waited_s = 0.0

    async def take(self, slots: FetchSlots, held: contextlib.AsyncExitStack) -> None:
        """Take a turn of the request's, then one of its key's, then a connection, given back when `held` closes.
        In that order: a fetch waiting for its request's turn never holds one of its key's, which other requests
        could use, and one waiting for either holds no connection, which other keys could use."""
        started = time.monotonic()
        steps: tuple[tuple[Whose, Callable[[], bool], Callable[[], AbstractAsyncContextManager[object]]], ...] = (
            ("request", slots.request.locked, lambda: slots.request),
            ("key", slots.key.locked, lambda: slots.key),
            ("connections", slots.connections.busy, lambda: slots.connections.turn(slots.owner)),
        )
        for whose, busy, turn in steps:
            if busy():
                self.waited_for = whose
            self.waiting = True
            await held.enter_async_context(turn())
            self.waiting = False
        self.waited_s = time.monotonic() - started


class KeyFetchSlots:
    """Per client key (its name; None for the one anonymous client of a server without keys), the fetches all its
    requests in this worker may have under way at once, and the worker's connections they all share. Keys are
    configured, so this holds one semaphore per key."""

    def __init__(self, per_key: int, *, connections: int = FETCH_CONNECTIONS) -> None:
        self.per_key = per_key
        self.connections = SharedConnections(connections)
        self._by_key: dict[str | None, asyncio.Semaphore] = {}

    def of(self, key: str | None) -> asyncio.Semaphore:
        """The turns one key's fetches share."""
        slots = self._by_key.get(key)
        if slots is None:
            slots = self._by_key[key] = asyncio.Semaphore(self.per_key)
        return slots
