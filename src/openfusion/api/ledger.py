"""One request's record: filled while it runs, closed once at the end (written to activity, counted, logged)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from openfusion.access.spend import Reservation
from openfusion.activity import ActivityWriter, ApiType, EntryRows, utc_now
from openfusion.activity.sql import call_row_values, generation_row_values
from openfusion.api.deps import AppState
from openfusion.api.disconnect import ClientDisconnected
from openfusion.api.relay_record import RelayRecord
from openfusion.errors import OpenFusionError
from openfusion.observability.logs import generation_id as generation_id_var
from openfusion.observability.tracing import current_request_spans
from openfusion.pipeline.events import RunContent, RunFinished
from openfusion.protocol import Usage, new_generation_id
from openfusion.upstream.trace import Bill, CallTrace, start_trace

if TYPE_CHECKING:
    from openfusion.upstream.client import Forwarded

log = logging.getLogger("openfusion.requests")

_ROLES = {"panel", "judge", "synthesizer", "outer", "passthrough"}
# A call of a closed ledger's record, with its known usage and cost as its bill had them.
_BilledCall = tuple[CallTrace, Usage | None, float | None]
_CALL_STATUSES = {"ok", "error"}  # any other (a call still running at the close, stopped there) is "cancelled"


class Ledger:
    """What is known of one request; `close()` records it exactly once."""

    def __init__(
        self,
        state: AppState,
        *,
        requested_model: str,
        streamed: bool,
        preset: str | None = None,
        key_name: str | None = None,
        route: str = "passthrough",
        api_type: ApiType = "completions",
        reservation: Reservation | None = None,
    ) -> None:
        self.state = state
        self.generation_id = new_generation_id()
        generation_id_var.set(self.generation_id)
        self.spans = current_request_spans()  # None unless tracing is on
        # The one source of the request's usage and cost.
        self.trace = start_trace(pricing=state.prices.cost_of, observer=self.spans)
        if self.spans is not None:
            self.spans.trace = self.trace
        self.created_at = utc_now()
        self.requested_model = requested_model
        self.streamed = streamed
        self.preset = preset
        self.key_name = key_name
        self.route = route  # the metrics label: bounded, unlike the model names clients may send
        self.api_type = api_type  # the surface the request came through
        self.status = "ok"
        self.failure_reason: str | None = None
        self.status_code: int | None = None  # the HTTP status the client got, once known
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.content = RunContent()
        self.cache_hit = False  # answered from the result cache
        self.cost_saved: float | None = None  # what the cached run cost, on a hit
        self._closed = False
        self.body_began = False  # a streamed body began relaying (`relay`): its own end records a departure
        self._unread: Forwarded | None = None  # the upstream response a streamed body will relay, until it begins
        # Its spend cap's hold: settled to the actual cost here, released once that is in the store.
        self.reservation = reservation
        if reservation is not None:
            reservation.started()
        state.metrics.request_started()
        state.drain.opened()

    def finished(self, event: RunFinished, *, finish_reason: str | None = None) -> None:
        """The fusion run produced its answer."""
        self.model, self.content = event.model, event.content
        self.finish_reason = finish_reason

    def failed(self, exc: BaseException) -> None:
        """The request ended with an error, or the client went away."""
        if isinstance(exc, asyncio.CancelledError | ClientDisconnected | GeneratorExit):
            self.status, self.failure_reason = "cancelled", "cancelled"
        else:
            self.status = "error"
            self.failure_reason = exc.code if isinstance(exc, OpenFusionError) and exc.code else "unexpected_error"
            if self.status_code is None:  # unless the response already began (a stream's 200)
                self.status_code = exc.status_code if isinstance(exc, OpenFusionError) else 500

    def abandoned(self) -> None:
        """The client left before its response began: cancelled, and it got no status at all."""
        self.failed(ClientDisconnected("The client left before the response began."))
        self.status_code = None

    @property
    def closed(self) -> bool:
        """Whether the request is recorded already."""
        return self._closed

    def overhead_ms(self) -> float:
        """Time spent in openfusion itself so far: elapsed time not covered by any upstream call."""
        now = time.perf_counter()
        return max(0.0, (now - self.trace.started - self.trace.upstream_seconds(now)) * 1000)

    def closing(
        self,
        body: AsyncIterator[bytes],
        *,
        upstream: Forwarded | None = None,
        render_error: Callable[[OpenFusionError], bytes] | None = None,
        keep_stopped: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[bytes]:
        """Relay a streamed body; a failure (or the client leaving) is recorded and closes the ledger at once.

        A body that ends well leaves the closing to the response's background task, after the last byte
        (with `record_before_end`: to commit(), before it). The end of the shutdown grace period stops the
        body where it waits and ends the stream with a `server_shutting_down` error chunk and `[DONE]` —
        or what `render_error` makes of the error (all that ends the stream after what the body sent), for a
        surface whose streams end another way — unless
        the answer was whole and recorded already: then the stream just ends. `keep_stopped` is awaited once that
        error is rendered, before it is sent: where a surface keeps what it rendered (a Responses API response that
        failed, for a client to retrieve), bounded by the surface to end before the server's backstop.

        `upstream`, the response `body` relays: a body whose client left before it began never runs (a generator
        not started has no clean-up to run), so `release_unread` closes it then.
        """
        self._unread = upstream
        return self._closing(body, render_error, keep_stopped)

    async def release_unread(self) -> None:
        """Close the upstream response of a streamed body that never began (its client left first)."""
        upstream, self._unread = self._unread, None
        if upstream is not None and not self.body_began:
            await upstream.aclose(complete=False)

    async def _closing(
        self,
        body: AsyncIterator[bytes],
        render_error: Callable[[OpenFusionError], bytes] | None,
        keep_stopped: Callable[[], Awaitable[None]] | None,
    ) -> AsyncIterator[bytes]:
        with self.relay() as relay:
            try:
                async for chunk in body:
                    yield chunk
                await self.commit()  # before the body's end, which tells the client the response is whole
            except BaseException as exc:
                if (end := relay.stopped(exc, render_error)) is None:
                    raise
                if end:
                    if keep_stopped is not None:  # what the surface keeps of its failed response, before it is told
                        await keep_stopped()
                    yield end

    # A streamed body that relays itself, without `closing`'s generator around it (a level each of its chunks would
    # cross), records its relay as `_closing` does, through `relay()` (`RelayRecord`), and commits before its last
    # bytes. `expect_relay` names the upstream response it will relay, as `closing` does.

    def expect_relay(self, upstream: Forwarded | None) -> None:
        """The upstream response a body that relays itself will relay: closed by `release_unread` if it never
        begins."""
        self._unread = upstream

    def relay(self) -> RelayRecord:
        """A streamed body begins relaying: the record of its relay, entered by the task relaying it (`RelayRecord`)."""
        self.body_began = True
        self._unread = None  # the body's own clean-up closes it from here
        return RelayRecord(self)

    @property
    def confirms(self) -> bool:
        """Whether commit() waits for the record (`record_before_end`)."""
        return self.state.activity is not None and self.state.activity.confirms

    async def commit(self) -> None:
        """Close now, and with `record_before_end` wait until the record is in the store (or known lost).

        Called before a response's last bytes: once a client has seen its answer end, its record is
        written, whatever happens to this process next. The wait is bounded by the store's write timeout,
        and ends with the shutdown's grace period.
        """
        activity = self.state.activity
        if self._closed or activity is None or not activity.confirms:
            return
        outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def told(written: bool) -> None:
            if not outcome.done():
                outcome.set_result(written)

        if self._close(confirm=told):
            self.state.drain.cut_short(outcome)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(activity.write_timeout_s):
                    await asyncio.shield(outcome)

    def close(self) -> None:
        """Record the request: activity (off the hot path), metrics, one log line. Idempotent."""
        self._close()

    def _close(self, *, confirm: Callable[[bool], None] | None = None) -> bool:
        """Close (see close()); True if this closed it and its record was queued, `confirm` then told its fate."""
        if self._closed:
            return False
        self._closed = True
        state = self.state
        state.metrics.request_ended()
        state.drain.closed()
        latency_ms = round((time.perf_counter() - self.trace.started) * 1000)
        overhead = self.overhead_ms()
        bill = self.trace.bill()  # what the response reported, if it got that far: the same calls, the same sums
        # A cache hit made no call: it cost nothing (known), not an unknown amount.
        usage = bill.usage.model_copy(update={"cost": 0.0}) if self.cache_hit else bill.usage
        cost = usage.cost
        state.metrics.observe_request(
            self.trace.calls, route=self.route, status=self.status, overhead_s=overhead / 1000, cost=cost
        )
        reservation = self.reservation
        if reservation is not None:
            reservation.settle(cost if self.trace.calls else 0.0)  # no upstream call: nothing spent
        written = reservation.written if reservation is not None else None
        if confirm is not None:
            written = confirm if written is None else _both(written, confirm)
        recorded = False
        if self.spans is not None:
            self.spans.closed(
                generation_id=self.generation_id,
                status=self.status,
                failure_reason=self.failure_reason,
                preset=self.preset,
                requested_model=self.requested_model,
                model=self.model,
                usage=usage,
                api_type=self.api_type,
            )
        if state.activity is not None:
            # Built by the writer with the rest of its batch, as it stands now: off the path of the client's next
            # request, which often comes while this runs.
            draft = _Draft(self, state.activity, latency_ms, usage, bill)
            recorded = state.activity.enqueue(draft, on_written=written, hurry=confirm is not None)
        if reservation is not None and not recorded:
            reservation.written(False)  # never reaches the store: its cost stays counted here
        if log.isEnabledFor(logging.INFO):  # its fields are not gathered for a line nobody writes
            log.info(
                "request finished",
                extra={
                    "model": self.requested_model,
                    "status": self.status,
                    "failure_reason": self.failure_reason,
                    "latency_ms": latency_ms,
                    "overhead_ms": round(overhead, 2),
                    "upstream_calls": len(self.trace.calls),
                    "key_name": self.key_name,
                },
            )
        return recorded

    def _rows(self, activity: ActivityWriter, latency_ms: int, usage: Usage, calls: list[_BilledCall]) -> EntryRows:
        """The request's rows, made straight from what it recorded: values of its own, with nothing to validate (a
        `GenerationRecord` and its `CallRecord`s validated on the way cost a fusion more than the rows themselves)."""
        content = self.content if activity.stores_content else None
        generation = generation_row_values(
            id=self.generation_id,
            created_at=self.created_at,
            requested_model=self.requested_model,
            model=self.model,
            preset=self.preset,
            status=self.status,  # type: ignore[arg-type]
            failure_reason=self.failure_reason,
            finish_reason=self.finish_reason,
            latency_ms=latency_ms,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
            cost=usage.cost,
            streamed=self.streamed,
            key_name=self.key_name,
            api_type=self.api_type,
            status_code=self.status_code,
            cache_hit=self.cache_hit,
            cost_saved=self.cost_saved,
            trace_id=self.spans.trace_id if self.spans is not None else None,
            panel_answers=(content.panel_answers or None) if content is not None else None,
            analysis=content.analysis.model_dump() if content is not None and content.analysis is not None else None,
            final_answer=content.final_answer if content is not None else None,
        )
        return EntryRows(
            self.generation_id,
            generation,
            tuple([self._call_row(position, *call) for position, call in enumerate(calls)]),
        )

    def _call_row(self, position: int, call: CallTrace, usage: Usage | None, cost: float | None) -> tuple[Any, ...]:
        """A call's row; `usage` and `cost`: the bill's for this call (`known_usage`, and its price: unknown stays
        unknown, never guessed)."""
        return call_row_values(
            generation_id=self.generation_id,
            position=position,
            role=call.role if call.role in _ROLES else "passthrough",  # type: ignore[arg-type]
            model=call.model,
            provider=call.provider,
            status=call.status if call.status in _CALL_STATUSES else "cancelled",  # type: ignore[arg-type]
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cost=cost,
            latency_ms=call.latency_ms,
            started_ms=max(0, round((call.started - self.trace.started) * 1000)),
            error=call.error,
            upstream_status=call.upstream_status,
            retries=call.retries,
        )


class _Draft:
    """A closed ledger's record, for the activity writer to build in its batch (`ActivityWriter.enqueue`).

    It keeps the ledger as it was at its close (a shallow copy: what is set on it later is not recorded), without
    the run's content unless the store keeps it; its calls with their usages and costs (the `bill`'s, made at the
    close), those still under way then as they were, stopped at that moment.
    """

    __slots__ = ("_activity", "_calls", "_latency_ms", "_ledger", "_usage")

    def __init__(
        self,
        ledger: Ledger,
        activity: ActivityWriter,
        latency_ms: int,
        usage: Usage,
        bill: Bill,
    ) -> None:
        now = time.perf_counter()
        self._ledger = snapshot = _snapshot(ledger)
        if not activity.stores_content:  # not held while the record waits for its batch
            snapshot.content = RunContent()
        self._activity, self._latency_ms, self._usage = activity, latency_ms, usage
        self._calls = [
            (call if call.ended is not None else _stopped(call, now), used, cost)
            for call, used, cost in zip(ledger.trace.calls, bill.usages, bill.costs, strict=True)
        ]

    @property
    def generation_id(self) -> str:
        return self._ledger.generation_id

    def build(self) -> EntryRows:
        return self._ledger._rows(self._activity, self._latency_ms, self._usage, self._calls)


def _snapshot(ledger: Ledger) -> Ledger:
    """A shallow copy of `ledger`, as `copy.copy` makes it, without its generic path (`__reduce_ex__`, `copyreg`): a
    request's close pays ~8 k instructions for it, not ~21 k."""
    snapshot: Ledger = object.__new__(type(ledger))
    snapshot.__dict__.update(vars(ledger))
    return snapshot


def _stopped(call: CallTrace, now: float) -> CallTrace:
    """An unfinished call as it is at `now`: what it has done so far, no later change."""
    snapshot = copy.copy(call)
    snapshot.ended = now
    return snapshot


def _both(first: Callable[[bool], None], second: Callable[[bool], None]) -> Callable[[bool], None]:
    def tell(written: bool) -> None:
        first(written)
        second(written)

    return tell
