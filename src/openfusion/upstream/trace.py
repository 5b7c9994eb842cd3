"""A request's upstream calls, recorded as they happen: for the activity store, metrics and the overhead header.

The trace lives in a context variable, so every task a request spawns (panelists included) appends to the
same trace; the pipeline names the role of its calls with `role(...)`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from openfusion.protocol import Usage


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
    upstream_status: int | None = None
    retries: int = 0
    first_token: float | None = None  # streams: when the first chunk arrived

    @property
    def latency_ms(self) -> int:
        return round(((self.ended or time.perf_counter()) - self.started) * 1000)


@dataclass
class RequestTrace:
    """Every upstream call of one request."""

    started: float = field(default_factory=time.perf_counter)
    calls: list[CallTrace] = field(default_factory=list)

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


def start_trace() -> RequestTrace:
    """Begin tracing the current request (and every task it starts from here on)."""
    trace = RequestTrace()
    _trace.set(trace)
    return trace


@contextlib.contextmanager
def role(name: str) -> Iterator[None]:
    """Calls made inside this block are recorded with this role (panel, judge, synthesizer, outer)."""
    token = _role.set(name)
    try:
        yield
    finally:
        _role.reset(token)


def begin_call(model: str, provider: str) -> CallTrace:
    """Record the start of an upstream call in the current trace (a detached record if there is none)."""
    call = CallTrace(role=_role.get(), model=model, provider=provider, started=time.perf_counter())
    trace = _trace.get()
    if trace is not None:
        trace.calls.append(call)
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
