"""The result cache at the edge: the request header that bypasses or refreshes it, and the lookup."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

from openfusion.api.access import client_key_name
from openfusion.api.disconnect import cancel_on_disconnect
from openfusion.cache.key import cache_key
from openfusion.cache.service import Looked, Mode, Ticket
from openfusion.errors import InvalidRequest
from openfusion.pipeline.plan import FusionPlan
from openfusion.protocol import ChatRequest

if TYPE_CHECKING:
    from openfusion.api.deps import AppState
    from openfusion.api.dispatch import Exchange

CACHE_HEADER = "X-Openfusion-Cache"
_MODES: dict[str, Mode] = {"": "use", "use": "use", "bypass": "bypass", "refresh": "refresh"}


def requested_mode(request: Request) -> Mode:
    """What the client asked of the cache: `bypass` (neither read nor kept), `refresh` (run anew and kept)."""
    value = request.headers.get(CACHE_HEADER, "").strip().lower()
    mode = _MODES.get(value)
    if mode is None:
        raise InvalidRequest(
            f"Invalid value for the {CACHE_HEADER} header: {value[:40]!r}; use 'bypass' or 'refresh'.",
            param=CACHE_HEADER,
        )
    return mode


async def stored_answer(request: Request, chat: ChatRequest, plan: FusionPlan | None) -> Ticket | Looked | None:
    """A hit for a request that reads the cache, looked up before the request is admitted: an answer that costs
    nothing needs no room under a spend cap. Otherwise what the look found, for `consult_cache` (the request is
    admitted and consults as usual); None when the request does not read the cache.
    """
    state: AppState = request.app.state.openfusion
    if state.cache is None or plan is None or plan.cache is None or requested_mode(request) != "use":
        return None
    return await state.cache.hit(_key(request, chat, plan), plan.cache)


async def consult_cache(exchange: Exchange, *, wait: bool = True) -> Ticket | None:
    """The cache's answer for a fusion request whose preset or plugin caches it (None: not cached at all).

    The key holds the client key's name: one key never reads another's cached answers. `wait=False` (a stream,
    whose first bytes go out at once): a `pending` ticket rather than waiting for an identical run under way;
    `settle_pending` waits for it then, inside the stream. Called after `stored_answer` found no hit: the store,
    just read, is not read again before the lease (`exchange.looked`). A wait here ends like a run when the client
    leaves (ClientDisconnected) or the shutdown's grace period ends (`server_shutting_down`).
    """
    cache, plan = exchange.state.cache, exchange.plan
    if cache is None or plan is None or plan.cache is None:
        return None
    mode = requested_mode(exchange.request)
    key = _key(exchange.request, exchange.chat, plan)
    lookup = cache.consult(key, plan.cache, mode=mode, wait=wait, looked=exchange.looked)
    if wait:  # it may wait for an identical run (on another replica: up to wait_s), stopped as a run is
        ticket = await cancel_on_disconnect(exchange.request, lookup, drain=exchange.state.drain)
    else:
        ticket = await lookup
    note_hit(exchange, ticket)
    return ticket


def _key(request: Request, chat: ChatRequest, plan: FusionPlan) -> str:
    return cache_key(plan, chat, tenant=client_key_name(request) or "")


async def settle_pending(exchange: Exchange) -> None:
    """Wait for the identical run a `pending` ticket found under way: the exchange's ticket is then a hit or a miss."""
    cache, pending = exchange.state.cache, exchange.cache
    assert cache is not None and pending is not None and pending.key is not None, "settle_pending() of no pending"
    exchange.cache = await cache.consult(pending.key, pending.policy, mode="use")
    note_hit(exchange, exchange.cache)


def admitted_hit(exchange: Exchange, ticket: Ticket) -> None:
    """A hit `stored_answer` found, its request now admitted: counted, and the exchange's answer."""
    assert exchange.state.cache is not None, "admitted_hit() without a cache"
    exchange.state.cache.count(ticket)
    exchange.cache = ticket
    note_hit(exchange, ticket)


def note_hit(exchange: Exchange, ticket: Ticket) -> None:
    """Mark the exchange's record as answered from the cache, when `ticket` is a hit."""
    if ticket.entry is not None:
        exchange.ledger.cache_hit = True
        exchange.ledger.cost_saved = ticket.entry.cost
