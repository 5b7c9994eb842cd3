"""The core every API surface shares: admit a request, open its ledger, run fusion, finish the response.

A surface (Chat Completions, Responses, …) parses its body into the internal `ChatRequest`, calls
`serve` with a renderer, and renders the pass-through or the fusion events in its own wire format.
Access, limits, cost and activity happen here, the same for every surface.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from openfusion.activity import ApiType
from openfusion.api.access import admit, check_preset_scope, client_key_name, key_scope, spend_reservation
from openfusion.api.body import named_model
from openfusion.api.cache import CACHE_HEADER, admitted_hit, consult_cache, settle_pending, stored_answer
from openfusion.api.chat_shape import check_fusion_shape
from openfusion.api.deps import AppState
from openfusion.api.ledger import Ledger
from openfusion.cache.entry import replayed
from openfusion.cache.service import Looked, Ticket
from openfusion.errors import OpenFusionError
from openfusion.pipeline.budget import WorstCase, priced
from openfusion.pipeline.events import Event
from openfusion.pipeline.plan import FusionPlan, check_reasoning, plan_asked, read_fusion
from openfusion.pipeline.reach import reach_of
from openfusion.pipeline.run import run_fusion
from openfusion.pipeline.tool_mode import run_tool_mode
from openfusion.pipeline.turns import remember_replayed
from openfusion.protocol import ChatRequest
from openfusion.upstream.retry import note_client_retry


@dataclass
class Exchange:
    """One admitted request: the internal chat request, its fusion plan (None: pass-through) and its ledger."""

    request: Request
    state: AppState
    chat: ChatRequest
    plan: FusionPlan | None
    ledger: Ledger
    cache: Ticket | None = None  # the result cache's answer, when the request is cacheable
    looked: Looked | None = None  # what the look before admission found, when it found no hit

    def fusion_events(self, *, stream: bool, panel_deltas: bool = False) -> AsyncIterator[Event]:
        """The fusion run's events (slug or tool mode); `stream` asks for the answer chunk by chunk,
        `panel_deltas` for the panel's text as it is written (for a surface that shows it)."""
        if self.cache is not None and self.cache.pending:
            return self._after_identical_run(stream=stream, panel_deltas=panel_deltas)
        return self._events(stream=stream, panel_deltas=panel_deltas)

    async def _after_identical_run(self, *, stream: bool, panel_deltas: bool) -> AsyncIterator[Event]:
        """A stream's events once the identical run it waits for has ended: replayed from the cache, or its own
        run. The wait is the stream's (its first bytes and keep-alives go out meanwhile)."""
        await settle_pending(self)
        async with contextlib.aclosing(self._events(stream=stream, panel_deltas=panel_deltas)) as events:
            async for event in events:
                yield event

    def _events(self, *, stream: bool, panel_deltas: bool) -> AsyncIterator[Event]:
        plan, state, ticket = self.plan, self.state, self.cache
        assert plan is not None, "fusion_events() of a pass-through request"
        if ticket is not None and ticket.entry is not None:  # a hit: the cached run's events, at once
            events = ticket.entry.replay(stream=stream, panel_deltas=panel_deltas)
            if plan.mode == "slug":  # an agent loop's next step finds this turn's analysis, as after a run
                remember_replayed(state.turns.owned_by(self.ledger.key_name), plan, self.chat.conversation(), events)
            return replayed(events)
        # What a judge's errors teach is each key's own: one key's run never changes how another's judge is asked.
        dialects = state.dialects.owned_by(self.ledger.key_name)
        # A key's requests share its turns at the fetch client: one key's research cannot hold every connection.
        research = state.research.owned_by(self.ledger.key_name) if state.research is not None else None
        if plan.mode == "tool":
            events = run_tool_mode(
                upstream=state.upstream, plan=plan, request=self.chat, stream=stream, dialects=dialects,
                research=research, panel_deltas=panel_deltas,
            )  # fmt: skip
        else:
            events = run_fusion(
                upstream=state.upstream, plan=plan, request=self.chat, stream=stream, dialects=dialects,
                research=research, panel_deltas=panel_deltas,
                turns=state.turns.owned_by(self.ledger.key_name),  # each key finds only its own agent-loop turns
                keep_content=state.activity is not None and state.activity.stores_content,  # only its record reads it
            )  # fmt: skip
        spans = self.ledger.spans
        if spans is not None:  # the run's stages in their spans (a cached run's replay has none)
            events = spans.events(events, request=self.chat)
        # The run has the conversation now, and lets go of it once its synthesizer's request is out; the exchange,
        # kept until the response's end (`_close`), keeps the request without it: a stream held open for minutes
        # should not hold a coding agent's hundreds of KB through its exchange.
        self.chat = self.chat.model_copy(update={"messages": []})
        if ticket is None or state.cache is None:
            return events
        return state.cache.record(ticket, events, generation_id=self.ledger.generation_id, streamed=stream)


Renderer = Callable[[Exchange], Awaitable[Response]]


async def open_exchange(
    request: Request,
    chat: ChatRequest,
    *,
    api_type: ApiType,
    sent: Mapping[str, Any] | None = None,
) -> Exchange:
    """Plan, admit (scope, guards, limits) and price a request, then open its ledger. `sent`: the body as the client
    sent it, when a provider speaking its dialect may get it so (what it asks of the provider's cache is priced)."""
    state: AppState = request.app.state.openfusion
    note_client_retry(request.headers)  # an SDK's retry: every upstream call of it gets one attempt
    plan: FusionPlan | None = None
    try:
        plan = plan_request(request, chat)
        if plan is not None:  # every model it calls reads the conversation: a part none can read is a 400 now
            check_fusion_shape(chat, mode=plan.mode)
        else:  # its `reasoning` is translated for each provider: a malformed one is a 400 now
            check_reasoning(chat)
        reach = reach_of(chat, plan)  # every model it can call: for the scope, the guards and the estimate
        search_price = state.research.search_price if state.research is not None else 0.0  # per research search
        # The worst case, computed only when something needs it (a spend cap, max_cost, the fusion report).
        worst = WorstCase(chat, plan, reach, prices=state.prices, search_price=search_price, sent=sent)
        looked = await stored_answer(request, chat, plan)
        hit = looked if isinstance(looked, Ticket) else None  # an answer at hand spends nothing: no room under a cap
        # 403 scope, 400 guards, 402 unbounded under a spend cap, 429 spend (reserved here) or concurrency
        await admit(request, chat=chat, plan=plan, reach=reach, worst=worst, free=hit is not None)
        if plan is not None and hit is None:  # (a hit spends nothing: no max_cost to keep under)
            plan = priced(plan, worst)  # 402 when over max_cost
    except OpenFusionError as exc:
        preset = plan.preset if plan else None
        record_refusal(request, exc, model=chat.model, streamed=chat.stream, api_type=api_type, preset=preset)
        raise
    ledger = Ledger(
        state,
        requested_model=chat.model,
        streamed=chat.stream,
        preset=plan.preset if plan else None,
        key_name=client_key_name(request),
        route=_route(state, chat, plan),
        api_type=api_type,
        reservation=spend_reservation(request),  # settled when the ledger closes
    )
    # What its calls' cache writes cost depends on (read only when a call reports writes without their 1-hour share).
    ledger.trace.long_cache_writes = worst.asks_only_long_cache
    exchange = Exchange(request, state, chat, plan, ledger)
    if isinstance(looked, Ticket):
        admitted_hit(exchange, looked)
    else:
        exchange.looked = looked
    return exchange


def plan_request(request: Request, chat: ChatRequest) -> FusionPlan | None:
    """The request's fusion plan (None: a pass-through), its preset checked against the key's scope first.

    403 for a preset outside the scope, before any preset is read: whether it exists, its panel size (a quorum
    above it) or its models never show in the answer; an unknown preset's 404 names only presets in scope.
    """
    state: AppState = request.app.state.openfusion
    ask = read_fusion(chat, default_preset=state.settings.default_preset)
    if ask is None:
        return None
    check_preset_scope(request, ask)
    return plan_asked(chat, ask, presets=state.presets, registry=state.registry, listed=key_scope(request))


def record_refusal(
    request: Request,
    error: OpenFusionError,
    *,
    model: str,
    streamed: bool,
    api_type: ApiType,
    preset: str | None = None,
) -> None:
    """Record a request refused before it ran (400, 402, 403, 404, 429): an error generation under the key's name.

    Counted under the `refused` route: requests that never ran stay apart from the failures of those that did.
    """
    ledger = Ledger(
        request.app.state.openfusion,
        requested_model=model,
        streamed=streamed,
        preset=preset,
        key_name=client_key_name(request),
        route="refused",
        api_type=api_type,
    )
    ledger.failed(error)
    ledger.close()
    error.generation_id = ledger.generation_id  # the client gets its record's id with the error


def record_unparsed_refusal(request: Request, raw: bytes, error: OpenFusionError, *, api_type: ApiType) -> None:
    """Record a body refused while a surface parsed it, when it names a model to file the refusal under."""
    named = named_model(raw)
    if named is not None:
        record_refusal(request, error, model=named[0], streamed=named[1], api_type=api_type)


async def serve(
    request: Request,
    chat: ChatRequest,
    render: Renderer,
    *,
    api_type: ApiType,
    sent: Mapping[str, Any] | None = None,
) -> Response:
    """Admit the request, render its response, and close its ledger once the last byte is out (`sent`: see
    `open_exchange`)."""
    exchange = await open_exchange(request, chat, api_type=api_type, sent=sent)
    ledger = exchange.ledger
    try:
        # A stream waits for an identical run under way inside its body, its first bytes sent: not before them.
        if exchange.cache is None:  # (a hit found before admission is the answer already)
            exchange.cache = await consult_cache(exchange, wait=not chat.stream)
        response = await render(exchange)
    except BaseException as exc:
        if exchange.cache is not None:
            exchange.cache.release()
        ledger.failed(exc)
        ledger.close()
        if isinstance(exc, Exception):  # the client gets its record's id with the error, a 500's too
            exc.generation_id = ledger.generation_id  # type: ignore[attr-defined]
        raise
    if exchange.cache is not None:
        response.headers[CACHE_HEADER] = exchange.cache.header
    ledger.status_code = response.status_code
    response.headers["X-Generation-Id"] = ledger.generation_id
    # Streams: the time before the first byte; otherwise the whole request's own time.
    response.headers["X-Openfusion-Overhead-Ms"] = f"{ledger.overhead_ms():.2f}"
    # After the last byte: off the client's path. (Not the response itself: it holds this task, a reference cycle.)
    if isinstance(response, StreamingResponse):
        response.background = BackgroundTask(_close, exchange, streamed=True)
        return response
    await ledger.commit()  # with record_before_end, the body goes out once its record is stored
    return _PlainResponse(response, exchange)


async def _close(exchange: Exchange, *, streamed: bool) -> None:
    """The response's end, however it came: the cache's run is given back and the ledger closed.

    A stream whose client left before its body began never runs the body's own clean-up (`Ledger.closing`, or the
    `Ledger.relay` of a body that relays itself, which records a client leaving), so this is the one path every
    response takes.
    """
    if exchange.cache is not None:
        exchange.cache.release()  # idempotent: the run's events usually gave it back already
    ledger = exchange.ledger
    if streamed and not ledger.body_began:
        await ledger.release_unread()  # its upstream response, or the provider would go on generating for no one
        if not ledger.closed:
            ledger.abandoned()
    ledger.close()


class _PlainResponse(Response):
    """A response's status, headers and body as rendered, whose background task runs however its sends end.

    Starlette's plain response runs it after its last send only: one cancelled in a send (the server's backstop at
    the end of its shutdown, an answer held behind an earlier one its client never read) skipped it, and the request
    never gave back its cache lease nor recorded itself, its in-flight count kept and the shutdown waiting for it. (A
    stream's response runs its background task on every path: `EventStreamResponse`.)
    """

    def __init__(self, response: Response, exchange: Exchange) -> None:  # (not Response's: nothing to render again)
        self.status_code, self.body, self.raw_headers = response.status_code, response.body, response.raw_headers
        self.background: BackgroundTask | None = BackgroundTask(_close, exchange, streamed=False)
        self._ledger = exchange.ledger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        background, self.background = self.background, None
        try:
            await super().__call__(scope, receive, send)
        except BaseException as exc:  # cancelled in a send: its answer never went out whole
            if not self._ledger.closed:
                self._ledger.failed(exc)
            raise
        finally:
            if background is not None:  # run once, cancelled or not (a plain response's `_close` never waits)
                await background()


def _route(state: AppState, chat: ChatRequest, plan: FusionPlan | None) -> str:
    """The metrics label of a request: a preset or a provider, never a free-form model name."""
    if plan is not None:
        return f"{plan.mode if plan.mode == 'tool' else 'fusion'}/{plan.preset}"
    try:
        return f"passthrough/{state.registry.resolve(chat.model).provider.name}"
    except OpenFusionError:
        return "passthrough/unknown"
