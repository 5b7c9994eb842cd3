"""A request's upstream calls, recorded as they happen: for usage and cost, the activity store, metrics and the
overhead header.

The trace lives in a context variable, so every task a request spawns (panelists included) appends to the
same trace; the pipeline names the role of its calls with `role(...)`. What a request used and cost is read
from here alone (`RequestTrace.bill()`), by the response and the activity record alike.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from openfusion.protocol import Usage, plausible_cost, round_usd, sum_usage


class Pricing(Protocol):
    """(model slug, usage, the cost the upstream reported or None) -> the call's cost in USD, None when unknown.

    `long_writes`: the request asked for 1-hour cache writes only (see `PriceTable.cost_of`)."""

    def __call__(
        self, model: str, usage: Usage, reported: float | None, /, *, long_writes: bool = False
    ) -> float | None: ...


class CallObserver(Protocol):
    """Watches a request's upstream calls and research tool calls as they happen (the tracing spans).

    Only a request whose trace has one (see `start_trace`) pays for any of this.
    """

    def attempt_started(self, call: CallTrace, headers: Mapping[str, str] | None) -> Mapping[str, str]:
        """An attempt of `call` begins (`call.retries` before it); returns the headers to send with it."""

    def attempt_failed(self, call: CallTrace, error: BaseException) -> None:
        """The attempt under way failed (another may follow)."""

    def call_ended(self, call: CallTrace) -> None:
        """`call` ended (see its status)."""

    def tool_started(self, name: str, arguments: str | None) -> Any:
        """A research tool call begins; returns what `tool_ended` gets back."""

    def tool_ended(self, handle: Any, *, error: str | None, sources: int) -> None:
        """A research tool call ended: `error` is why it failed, if it did."""


@dataclass
class CallTrace:
    """One upstream call: who, how long, how it ended, what it used."""

    role: str
    model: str
    provider: str
    started: float  # time.perf_counter()
    ended: float | None = None
    status: str = "running"  # ok | error | cancelled
    usage: Usage | None = None  # None: the upstream did not report it
    reported_cost: float | None = None
    error: str | None = None
    upstream_status: int | None = None  # the HTTP status, or the code of an error event the answer ended with
    accepted: bool = False  # a success status came back: the provider took the request, and may bill from here
    retries: int = 0
    # Attempts that may have reached the provider and failed without an HTTP error (a timeout, a lost connection, an
    # answer cut off): the provider may have billed them, and nobody reported what they used.
    unreported_attempts: int = 0
    first_token: float | None = None  # streams: when the first chunk arrived
    sent: bool = False  # whether the request may have reached the provider (a refused connection never does)
    response_model: str | None = None  # what the upstream called itself
    finish_reason: str | None = None
    observer: CallObserver | None = field(default=None, repr=False)

    @property
    def latency_ms(self) -> int:
        return round(((self.ended or time.perf_counter()) - self.started) * 1000)


def known_usage(call: CallTrace) -> Usage | None:
    """What a finished call used: as reported; nothing when the provider never saw it or refused it with an
    HTTP error; None when unknown (no usage reported, or broken off after the provider may have started).

    A call the provider accepted (a success status) and that ended early — the client gone mid-stream, an error
    event after some of the answer — used what it generated until then, which nobody reported: unknown, so a spend
    cap keeps counting its estimate. So is a call retried after an attempt that may have been billed: its last
    attempt's usage is not all it used."""
    if call.unreported_attempts:
        return None
    if call.usage is not None:
        return call.usage
    refused = call.upstream_status is not None and not call.accepted
    if call.status in ("error", "cancelled") and (not call.sent or refused):
        return Usage()
    return None


def reported_cost(model: str, usage: Usage, reported: float | None, /, *, long_writes: bool = False) -> float | None:
    """The pricing without a price table: the cost the upstream reported (when plausible), else unknown."""
    return plausible_cost(reported if reported is not None else usage.cost)


@dataclass(frozen=True)
class Bill:
    """What a request's upstream calls used, summed."""

    usage: Usage  # tokens of every call whose usage is known; `cost` only when every call's cost is known
    complete: bool  # False when some call's usage is unknown: the tokens above then leave it out
    costs: tuple[float | None, ...] = ()  # each call's cost (see `RequestTrace.cost_of`), in the calls' order
    usages: tuple[Usage | None, ...] = ()  # each call's known usage (see `known_usage`), in the calls' order


@dataclass
class RequestTrace:
    """Every upstream call of one request."""

    started: float = field(default_factory=time.perf_counter)
    calls: list[CallTrace] = field(default_factory=list)
    # What the request spent apart from its calls' tokens (USD): a paid search backend's searches, one each.
    charges: list[float] = field(default_factory=list)
    pricing: Pricing = reported_cost
    observer: CallObserver | None = None  # tracing: set only when it is on
    # Whether the request asked for 1-hour cache writes only: then a write reported without the 1-hour share is one
    # (`pricing`). Asked only of a call that reports such writes.
    long_cache_writes: Callable[[], bool] | None = None
    # The last bill, and the state of the calls it summed: the response and the record ask for the same one.
    _billed: tuple[tuple[Any, ...], Bill] | None = field(default=None, repr=False)

    def cost_of(self, call: CallTrace) -> float | None:
        """One call's cost: 0 when nothing was billed, else priced (reported, else the price table), else None."""
        return self._priced(call, known_usage(call))

    def _priced(self, call: CallTrace, usage: Usage | None) -> float | None:
        """`cost_of(call)`, its known usage (`known_usage`) found already."""
        if usage is None:
            return None
        if call.usage is None:
            return 0.0  # never sent, or refused with an HTTP error: providers bill nothing for those
        unsplit = usage.cache_write_tokens > 0 and not usage.splits_cache_writes
        long_writes = unsplit and self.long_cache_writes is not None and self.long_cache_writes()
        return self.pricing(call.model, usage, call.reported_cost, long_writes=long_writes)

    def bill(self) -> Bill:
        """Tokens and cost summed over every call so far (and the charges beside them), and whether every call's
        usage is known.

        Asked again with no call changed since (the response's summary, then the request's record), it is the
        same bill: not summed and priced twice, and never two different answers.
        """
        calls = tuple(
            (
                id(c),
                c.status,
                c.sent,
                c.upstream_status,
                c.accepted,
                id(c.usage),
                c.reported_cost,
                c.unreported_attempts,
            )
            for c in self.calls
        )
        state = (*calls, len(self.charges))
        if self._billed is not None and self._billed[0] == state:
            return self._billed[1]
        usages = tuple(map(known_usage, self.calls))
        known = [usage for usage in usages if usage is not None]  # `is`, not `in`: a Usage compares field by field
        costs = tuple(map(self._priced, self.calls, usages))
        spent = sum(c for c in costs if c is not None) + sum(self.charges)
        cost = None if not costs or None in costs else round_usd(spent)
        bill = Bill(sum_usage(known, cost=cost), complete=len(known) == len(usages), costs=costs, usages=usages)
        self._billed = (state, bill)
        return bill

    def upstream_seconds(self, until: float | None = None) -> float:
        """Wall time during which at least one upstream call was running (the union of their intervals)."""
        end_of_request = until or time.perf_counter()
        spans = sorted((c.started, c.ended or end_of_request) for c in self.calls)
        total, current_start, current_end = 0.0, None, None
        for start, end in spans:
            if current_end is None or start > current_end:
                if current_end is not None and current_start is not None:
                    total += current_end - current_start
                current_start, current_end = start, end
            else:
                current_end = max(current_end, end)
        if current_end is not None and current_start is not None:
            total += current_end - current_start
        return total


_trace: ContextVar[RequestTrace | None] = ContextVar("openfusion_trace", default=None)
_role: ContextVar[str] = ContextVar("openfusion_role", default="passthrough")


def start_trace(pricing: Pricing = reported_cost, *, observer: CallObserver | None = None) -> RequestTrace:
    """Begin tracing the current request (and every task it starts from here on)."""
    trace = RequestTrace(pricing=pricing, observer=observer)
    _trace.set(trace)
    return trace


def current_trace() -> RequestTrace:
    """The current request's trace; one is started when there is none (a pipeline run outside a server)."""
    return _trace.get() or start_trace()


@contextlib.contextmanager
def role(name: str) -> Iterator[None]:
    """Calls made inside this block are recorded with this role (panel, judge, synthesizer, outer)."""
    token = _role.set(name)
    try:
        yield
    finally:
        _role.reset(token)


def add_charge(usd: float) -> None:
    """Charge the current request `usd` apart from its calls' tokens (a paid search); nothing outside a request."""
    trace = _trace.get()
    if trace is not None and usd > 0:
        trace.charges.append(usd)


def current_role() -> str:
    """The role of the calls made here (panel, judge, synthesizer, outer, passthrough)."""
    return _role.get()


def current_observer() -> CallObserver | None:
    """The current request's call observer: None unless tracing is on."""
    trace = _trace.get()
    return trace.observer if trace is not None else None


def begin_call(model: str, provider: str) -> CallTrace:
    """Record the start of an upstream call in the current trace (a detached record if there is none)."""
    call = CallTrace(role=_role.get(), model=model, provider=provider, started=time.perf_counter())
    trace = _trace.get()
    if trace is not None:
        trace.calls.append(call)
        call.observer = trace.observer
    return call


def end_call(
    call: CallTrace,
    *,
    status: str,
    usage: Usage | None = None,
    reported_cost: float | None = None,
    error: str | None = None,
    upstream_status: int | None = None,
) -> None:
    """Record how an upstream call ended."""
    call.ended = time.perf_counter()
    call.status = status
    call.usage = usage
    call.reported_cost = reported_cost if reported_cost is not None else (usage.cost if usage else None)
    call.error = error
    call.upstream_status = upstream_status
    if call.observer is not None:
        call.observer.call_ended(call)
