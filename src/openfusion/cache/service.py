"""The result cache at work: look a request up, make identical requests wait for one run, keep its result."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from redis.exceptions import RedisError

from openfusion.cache.config import CacheSettings
from openfusion.cache.entry import CachedRun, CorruptEntry, dump_event, encode_run
from openfusion.cache.lease import LEASE_S, Leases
from openfusion.cache.run_ends import RunEnds
from openfusion.cache.stores import RedisStore, ResultStore
from openfusion.errors import OpenFusionError
from openfusion.observability.metrics import Metrics
from openfusion.pipeline.events import Event, RunFinished, SynthesisChunk, SynthesisMessage
from openfusion.pipeline.plan import CachePolicy

log = logging.getLogger("openfusion.cache")

Mode = Literal["use", "bypass", "refresh"]
# What a store may raise: the cache then acts as if it held nothing (the request runs).
_STORE_ERRORS = (OpenFusionError, RedisError, OSError, TimeoutError, CorruptEntry)
_POLL_S = 0.05  # how often a request waiting for another replica's run looks again, unless told when it ends
_LOOK_AGAIN_S = 1.0  # how often it looks again when told (`RunEnds`): for a lock that expired with its holder
# How long a run that kept nothing stays marked so in Redis: many looks by its waiters on other replicas.
_UNKEPT_S = 10.0
# An answer that stopped for these reasons is not one to serve again: the next run may well finish.
_UNCLEAN_FINISH = {"length": "truncated", "content_filter": "filtered"}


@dataclass(eq=False)
class Ticket:
    """One request's dealings with the cache: a hit to replay, or a run to keep (`key` set) or not."""

    status: Literal["hit", "miss", "bypass", "refresh", "pending"]
    policy: CachePolicy
    key: str | None = None  # set when the run's result is to be kept
    entry: CachedRun | None = None  # set on a hit
    kept: bool = False  # its run's result is in the store: the requests waiting for it find it there
    _release: list[Any] = field(default_factory=list)  # callbacks giving back the run of `key`

    @property
    def header(self) -> str:
        """The `X-Openfusion-Cache` response header: a refreshed run is a miss that was kept; `pending`: the outcome
        comes later (a stream that waits for an identical run, its headers sent meanwhile)."""
        return "miss" if self.status == "refresh" else self.status

    @property
    def pending(self) -> bool:
        """An identical run is under way: `consult` again to wait for it (without waiting, nothing is known yet)."""
        return self.status == "pending"

    def release(self) -> None:
        """Let requests waiting for this run look again (idempotent)."""
        callbacks, self._release = self._release, []
        for callback in callbacks:
            callback()


class _StoreFailed(Exception):
    """The store failed, or did not answer within `timeout_s`, when asked for an entry."""


# What a look before `consult` found when it found no hit: nothing the policy accepts, or no answer from the store.
Looked = Literal["empty", "unanswered"]


@dataclass
class _Remote:
    """The run on another replica that a request waits for: its lock's token, once seen."""

    token: str | None = None


class ResultCache:
    """Looks up, de-duplicates and keeps fusion runs in one store."""

    def __init__(self, store: ResultStore, settings: CacheSettings, metrics: Metrics) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self._flights: dict[str, asyncio.Future[bool]] = {}  # runs in this process, by key: look again when done?
        self._unlocking: set[asyncio.Task[None]] = set()
        self._leases = Leases(store, timeout_s=settings.timeout_s) if isinstance(store, RedisStore) else None

    async def consult(
        self, key: str, policy: CachePolicy, *, mode: Mode, wait: bool = True, looked: Looked | None = None
    ) -> Ticket:
        """A hit, or a miss whose run this request makes (identical ones wait for it, up to `wait_s`).

        `wait=False`: a `pending` ticket instead of waiting for an identical run under way (to consult again later).
        `looked`: what reading the store for `key` just now (`hit`) found: "empty", it is not read again before the
        lease; "unanswered", the request runs at once as a miss (the store would not answer the lock either).
        """
        if mode == "bypass":
            ticket = Ticket("bypass", policy)
        elif mode == "refresh":
            ticket = Ticket("refresh", policy, key=key)
            try:
                await self._lease(ticket, key)  # waiters may take this run's result; it waits for nobody
            except BaseException:  # cancelled while taking the lock (its client left): the run goes back
                ticket.release()
                raise
        else:
            ticket = await self._look_up(key, policy, wait=wait, looked=looked)
        if not ticket.pending:  # (a pending one is counted once its outcome is known)
            self.count(ticket)
        return ticket

    async def hit(self, key: str, policy: CachePolicy) -> Ticket | Looked:
        """The stored run of `key`, when there is one `policy` accepts; otherwise what the look found (the request
        then `consult`s with it). Takes no lease and waits for nothing; not counted until the request it answers is
        admitted (`count`)."""
        try:
            return await self._hit(key, policy) or "empty"
        except _StoreFailed:
            return "unanswered"

    def count(self, ticket: Ticket) -> None:
        """Count a lookup's outcome (and the cost a hit saved) in the metrics."""
        self.metrics.cache_lookups.labels(ticket.status).inc()
        if ticket.entry is not None and ticket.entry.cost:
            self.metrics.cache_cost_saved.inc(ticket.entry.cost)

    async def _look_up(self, key: str, policy: CachePolicy, *, wait: bool, looked: Looked | None = None) -> Ticket:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.wait_s
        remote = _Remote()
        ends = self.store.ends if wait and isinstance(self.store, RedisStore) else None
        while True:
            # Watched before the look: a run of `key` given back from here on, on any replica, wakes this request.
            ended = ends.watch(key) if ends is not None else None
            try:
                # Not when the store was read just now (`looked`): a run kept since is found by the look after the
                # lease, or by the next round.
                unanswered = looked == "unanswered"
                if looked is None:
                    try:
                        if hit := await self._hit(key, policy):
                            return hit
                    except _StoreFailed:
                        unanswered = True
                looked = None
                if unanswered:  # it will not answer the lock or another look either: run now, as a miss
                    ticket = Ticket("miss", policy, key=key)
                    await self._lease(ticket, key, lock=False)  # identical requests here still wait for it
                    return ticket
                ticket = Ticket("miss", policy, key=key)
                remaining = deadline - loop.time()
                try:
                    if await self._lease(ticket, key, remote=remote):
                        # Between the look and the lease, an identical run may have been kept and its lease given back:
                        # one more look (a read, against a whole run) or it would be made twice.
                        with contextlib.suppress(_StoreFailed):  # no answer now: this request makes the run
                            if hit := await self._hit(key, policy):
                                ticket.kept = True  # what waits for this lease finds the hit too
                                ticket.release()
                                return hit
                        return ticket  # this request makes the run
                    if remaining <= 0:
                        return ticket  # this request runs after waiting its fill, without the lease
                    if not wait:
                        return Ticket("pending", policy, key=key)
                    if not await self._wait(key, remaining, remote=remote, ended=ended):
                        # The run ended without keeping its result: every request that waited for it runs now (on
                        # every replica), not one after another; the first to get here takes the lease, so that later
                        # identical ones wait.
                        await self._lease(ticket, key)
                        return ticket
                except BaseException:  # cancelled (the client of a stream that waits here left): the lease goes back
                    ticket.release()
                    raise
            finally:
                _unwatch(ends, key, ended)

    async def _hit(self, key: str, policy: CachePolicy) -> Ticket | None:
        """A hit on `key`, when the store holds a run that `policy` accepts; _StoreFailed when it does not tell."""
        entry = await self._get(key)
        if entry is None or entry.flags - allowed(policy):
            return None
        return Ticket("hit", policy, entry=entry)

    async def _get(self, key: str) -> CachedRun | None:
        """The entry of `key` (None: none, or one unreadable); raises _StoreFailed when the store does not tell."""
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                raw = await self.store.get(key)
            return CachedRun.decode(raw) if raw is not None else None
        except CorruptEntry as exc:
            log.warning("result cache lookup failed (the request runs): %s", exc)
            return None
        except _STORE_ERRORS as exc:
            log.warning("result cache lookup failed (the request runs): %s", exc)
            raise _StoreFailed from None

    async def _lease(self, ticket: Ticket, key: str, *, remote: _Remote | None = None, lock: bool = True) -> bool:
        """Take the run of `key`: identical requests wait for it. False when another request has it (`remote` then
        notes the first run on another replica this request saw holding it). `lock=False`: in this process only (the
        store just failed to answer a look: its lock would cost as long again)."""
        if self.settings.wait_s <= 0 or key in self._flights:
            return False
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        ticket._release.append(lambda: self._land(key, flight, look_again=ticket.kept))
        if lock and isinstance(self.store, RedisStore):  # other replicas wait for it too
            token = secrets.token_hex(8)
            # Given back from the start: cancelled while the lock is being taken, it may have been taken all the same
            # (giving back a lock another holds leaves it alone: it is the token's only).
            ticket._release.append(lambda: self._unlock(key, token, kept=ticket.kept))
            try:
                async with asyncio.timeout(self.settings.timeout_s):
                    holder = await self.store.lock(key, token, ttl_s=LEASE_S)
            except _STORE_ERRORS as exc:
                log.warning("result cache lock failed: %s", exc)
                return True  # run without the lock: at worst another replica runs it too
            if holder != token:  # another replica makes the run: whoever waits for it here looks again
                if remote is not None and remote.token is None:
                    remote.token = holder  # the run to wait for, even once another has taken its place
                ticket._release.clear()
                self._land(key, flight, look_again=True)
                return False
            if self._leases is not None:  # held for as long as the run goes, however long past its expiry
                ticket._release.append(self._leases.hold(key, token))
        return True

    def _land(self, key: str, flight: asyncio.Future[bool], *, look_again: bool) -> None:
        """The end of a run of `key` here; `look_again` False: it kept nothing, its waiters need not look."""
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.done():
            flight.set_result(look_again)

    def _unlock(self, key: str, token: str, *, kept: bool) -> None:
        assert isinstance(self.store, RedisStore)
        task = asyncio.get_running_loop().create_task(self._unlock_now(self.store, key, token, kept=kept))
        self._unlocking.add(task)
        task.add_done_callback(self._unlocking.discard)

    async def _unlock_now(self, store: RedisStore, key: str, token: str, *, kept: bool) -> None:
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                await store.unlock(key, token, kept=kept, unkept_ttl_s=_UNKEPT_S)
        except _STORE_ERRORS as exc:  # the lock expires by itself
            log.warning("result cache unlock failed: %s", exc)

    async def _wait(
        self, key: str, remaining: float, *, remote: _Remote, ended: asyncio.Future[None] | None = None
    ) -> bool:
        """Until the run of `key` ends here, or ends on another replica (`ended`: Redis says so; a moment, without
        it), at most `remaining`.

        False when the run ended without keeping its result (nothing to find: waiting again is pointless).
        """
        flight = self._flights.get(key)
        if remote.token is not None or flight is None:  # not a run here (one here now may be its replacement)
            if ended is not None and isinstance(self.store, RedisStore) and self.store.ends.live:
                await asyncio.wait((ended,), timeout=min(_LOOK_AGAIN_S, remaining))
            else:
                await asyncio.sleep(min(_POLL_S, remaining))
            return remote.token is None or not await self._unkept(remote.token)
        try:
            return await asyncio.wait_for(asyncio.shield(flight), remaining)
        except TimeoutError:
            return True

    async def _unkept(self, token: str) -> bool:
        """Whether the run of `token` on another replica ended without keeping its result."""
        assert isinstance(self.store, RedisStore)
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                return await self.store.unkept(token)
        except _STORE_ERRORS as exc:  # look again in a moment
            log.warning("result cache lookup failed: %s", exc)
            return False

    async def record(
        self, ticket: Ticket, events: AsyncIterator[Event], *, generation_id: str, streamed: bool
    ) -> AsyncIterator[Event]:
        """Relay a run's events, keeping a copy; a run that ends well (and is cacheable) is stored before its end
        is relayed, so the requests waiting for it find it."""
        kept: list[dict[str, Any]] = []
        answer = Answer()
        try:
            async for event in events:
                kept.append(dump_event(event))  # a copy, before a surface's renderer touches the event
                answer.observe(event)
                if isinstance(event, RunFinished):
                    await self._keep(ticket, event, kept, answer=answer, generation_id=generation_id,
                                     streamed=streamed)  # fmt: skip
                    ticket.release()
                yield event
        finally:
            ticket.release()  # failed or abandoned: the waiting requests run themselves

    async def _keep(
        self,
        ticket: Ticket,
        end: RunFinished,
        events: list[dict[str, Any]],
        *,
        answer: Answer,
        generation_id: str,
        streamed: bool,
    ) -> None:
        if ticket.key is None:
            return
        flags = run_flags(end.fusion)
        for flag in flags - allowed(ticket.policy):
            self.metrics.cache_skipped.labels(flag).inc()
            return
        if (flaw := answer.flaw()) is not None:
            self.metrics.cache_skipped.labels(flaw).inc()
            return
        raw = encode_run(generation_id=generation_id, created_at=time.time(), cost=end.usage.cost,
                         streamed=streamed, flags=sorted(flags), events=events)  # fmt: skip
        if len(raw) > self.settings.max_entry_bytes:
            self.metrics.cache_skipped.labels("too_large").inc()
            return
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                await self.store.put(ticket.key, raw, ttl_s=ticket.policy.ttl_s)
        except _STORE_ERRORS as exc:
            log.warning("result cache write failed: %s", exc)
            return
        ticket.kept = True
        self.metrics.cache_bytes.inc(len(raw))

    async def aclose(self) -> None:
        """Finish the pending unlocks and release the store's connections."""
        if self._leases is not None:
            await self._leases.aclose()
        if self._unlocking:
            await asyncio.gather(*self._unlocking, return_exceptions=True)
        await self.store.aclose()


class Answer:
    """What a run's answer came to, read from its synthesis events: how it finished, and whether it said anything."""

    __slots__ = ("finish_reason", "said")

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.said = False  # any text or tool call

    def observe(self, event: Event) -> None:
        """Take note of one event of the run (only the synthesizer's answer counts)."""
        if type(event) is SynthesisChunk:
            for choice in event.chunk.get("choices") or ():
                self._note(choice.get("delta") or {}, choice.get("finish_reason"))
        elif type(event) is SynthesisMessage:
            self._note(event.message, event.finish_reason)

    def _note(self, message: dict[str, Any], finish_reason: str | None) -> None:
        content = message.get("content")
        if message.get("tool_calls") or (content.strip() if isinstance(content, str) else content):
            self.said = True
        if finish_reason:
            self.finish_reason = finish_reason

    def flaw(self) -> str | None:
        """Why the answer is unfit to keep (`truncated`, `filtered`, `empty`), or None for a clean one."""
        if self.finish_reason in _UNCLEAN_FINISH:
            return _UNCLEAN_FINISH[self.finish_reason]
        return None if self.said else "empty"


def _unwatch(ends: RunEnds | None, key: str, ended: asyncio.Future[None] | None) -> None:
    if ends is not None and ended is not None:
        ends.unwatch(key, ended)


def allowed(policy: CachePolicy) -> frozenset[str]:
    """The kinds of run a request's policy accepts from the cache (and lets it keep)."""
    return frozenset({*(["degraded"] if policy.degraded else []), *(["research"] if policy.research else [])})


def run_flags(fusion: dict[str, Any]) -> frozenset[str]:
    """What makes a finished run unfit to keep unless asked for: it degraded, or it researched the web."""
    flags = set()
    panel = fusion.get("panel") or []
    judge = fusion.get("judge") or {}
    synthesizer = fusion.get("synthesizer") or {}
    if any(p.get("status") != "ok" for p in panel) or judge.get("status") == "error" or synthesizer.get("fallbacks"):
        flags.add("degraded")
    if (fusion.get("server_tool_use_details") or {}).get("tool_calls_executed", 0) > 0:
        flags.add("research")
    return frozenset(flags)
