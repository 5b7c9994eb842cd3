"""The HTTP edge of access control: the key-checking middleware, `admit` for chat requests, CORS."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import FastAPI, Request
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from openfusion.access.config import CorsConfig
from openfusion.access.control import AccessControl
from openfusion.access.errors import AddressBraked, AuthenticationFailed, MetricsNotAllowed, ModelNotAllowed
from openfusion.access.guards import check_guards
from openfusion.access.keys import Client
from openfusion.access.limiter import Slot
from openfusion.access.scope import check_scope, requested_models
from openfusion.access.spend import Reservation, SpendSource
from openfusion.api.browser import BrowserGuard, is_activity_page
from openfusion.api.handlers import error_response, route_path
from openfusion.errors import CostLimitExceeded, InvalidRequest, OpenFusionError
from openfusion.pipeline.budget import WorstCase
from openfusion.pipeline.plan import FUSION_TOOL_TYPES, FusionAsk, FusionPlan, fusion_plugin_index
from openfusion.pipeline.reach import Reach
from openfusion.protocol import ChatRequest

# Probes of orchestrators and load balancers: never behind a key, never counted.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
_GRANT = "openfusion.access"
_RELEASE_TIMEOUT_S = 5.0
_POLICY_VIOLATION = 1008


@dataclass
class Grant:
    """One request's client, the slots it holds until its response has ended, and its spend reservation."""

    access: AccessControl
    client: Client
    slots: list[Slot] = field(default_factory=list)
    reservation: Reservation | None = None  # settled by the request's ledger; released here if never used

    async def release(self) -> None:
        """Give back every slot, even while the request is being cancelled (client gone)."""
        if not self.slots and self.reservation is None:
            return
        with anyio.move_on_after(_RELEASE_TIMEOUT_S, shield=True):
            while self.slots:
                await self.slots.pop().release()
            if self.reservation is not None:
                reservation, self.reservation = self.reservation, None
                await reservation.release()


class AccessMiddleware:
    """Checks the client key and requests per minute on every route but the health probes.

    A pure ASGI middleware: it wraps the whole response, so a fusion slot taken by `admit` is given
    back when the last byte is sent or the client leaves.
    """

    def __init__(self, app: ASGIApp, *, access: AccessControl) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or route_path(scope) in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            grant = await open_grant(self.access, scope)
        except OpenFusionError as exc:
            if scope["type"] == "websocket":  # no route uses one yet; refuse it all the same
                await WebSocketClose(code=_POLICY_VIOLATION, reason=exc.message)(scope, receive, send)
            else:
                await refusal_response(exc, scope)(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            await grant.release()


async def open_grant(access: AccessControl, scope: Scope) -> Grant:
    """Check the request's key and count it against its requests per minute; its grant goes into the scope.

    Raises the refusal (401, 429); the caller releases the grant once the response has ended.
    """
    presented, unreadable = _presented_key(scope)
    try:
        client = await access.authenticate(
            presented, address=_client_address(scope), conflicting=_conflicting_keys(scope), unreadable=unreadable
        )
    except (AuthenticationFailed, AddressBraked) as exc:
        _count_refusal(scope, exc.reason)
        raise
    await access.count_request(client)
    grant = Grant(access, client)
    scope.setdefault("state", {})[_GRANT] = grant
    return grant


async def admit(
    request: Request, *, chat: ChatRequest, plan: FusionPlan | None, reach: Reach, worst: WorstCase, free: bool = False
) -> None:
    """Check a chat request against its key's scope and the guards; reserve its spend; hold its slots (a request's,
    and a fusion run's). `free`: its answer is at hand already (a cache hit), it spends nothing and reserves nothing.

    Raises ModelNotAllowed (403), InvalidRequest (400), CostLimitExceeded (402: a cost a spend cap cannot
    bound) or LimitExceeded (429). The slots are given back by the middleware when the response ends; the
    reservation is settled by the request's ledger.
    """
    grant = _required_grant(request, "admit")
    check_scope(grant.client, requested_models(reach))
    if plan is None:  # a fusion run sends providers bodies of its own, without the client's OpenRouter fields
        check_provider_choices(request, chat, chat.model_extra or {})
    check_guards(grant.access.guards, chat=chat, plan=plan, reach=reach)
    if grant.client.limits.daily_spend_usd is not None and not free:  # keys without a cap never pay for an estimate

        def bound(why: str) -> float:
            return worst.estimate.bounded(why=why)

        grant.reservation = await grant.access.reserve_spend(grant.client, spend_source(request.app), bound)
    request_slot = await grant.access.take_request_slot(grant.client)
    if request_slot is not None:
        grant.slots.append(request_slot)
    if plan is not None:
        slot = await grant.access.take_fusion_slot(grant.client)
        if slot is not None:
            grant.slots.append(slot)


def check_tools_billed_apart(request: Request, chat: ChatRequest, billed: Sequence[tuple[str, str]]) -> None:
    """Raise CostLimitExceeded (402 `cost_unbounded`) when a key under a daily spend cap sends a provider a tool that
    the provider runs itself and bills per use, apart from tokens (`billed`: each one's param and type).

    A cap needs a bound: no price here knows what a web search or a code container costs, and no record counts it,
    so every such request would spend past the cap unseen. Only a request the cap is enforced on (an activity store
    to read spend from) and whose models the key's scope covers is judged here: another is left to its own refusal.
    """
    if not billed:
        return
    client = _required_grant(request, "check_tools_billed_apart").client
    cap = client.limits.daily_spend_usd
    if cap is None or spend_source(request.app) is None:
        return
    if not all(client.allows(model) for model in chat.candidate_models()):
        return  # the scope's 403 comes first, and says nothing of how a model outside it is served
    param, kind = billed[0]
    who = f"API key {client.name!r}" if client.name is not None else "This server"
    raise CostLimitExceeded(
        f"{who} has a daily spend cap, but the worst-case cost of this request cannot be bounded: the provider runs "
        f"the {kind!r} tool ({param}) itself and bills each use apart from tokens, at a price nothing here knows. "
        "Leave the tool out, or use a key without a spend cap.",
        param=param,
        code="cost_unbounded",
    )


# Plugins OpenRouter runs that call no model but the one requested (the key's scope covers it). Any other plugin (an
# auto router's `allowed_models`, one added tomorrow) may choose models: a scoped key may not send it.
_PLUGINS_WITHIN_SCOPE = frozenset({"web", "file-parser", "response-healing"})


def check_provider_choices(request: Request, chat: ChatRequest, sent: Mapping[str, Any]) -> None:
    """Refuse what a pass-through would let the provider choose past a key's scope or spend cap: an OpenRouter
    `preset` (the operator's, naming any model and settings), a fusion plugin spelt other than `"fusion"`
    (OpenRouter may read it as its own and run a panel of the models it names), and plugins the provider runs.

    `sent` holds the top-level fields the provider gets as sent (the chat body's extra fields, or a native
    surface's whole body). Refused rather than stripped: the client asked for them, and an answer made without
    them would not be the one it asked for. A key with every model in scope and no enforced cap is left alone:
    for it a pass-through stays a pass-through (its fields already reach only what the operator allows it).
    Raises ModelNotAllowed (403), InvalidRequest (400) or CostLimitExceeded (402 `cost_unbounded`).
    """
    client = _required_grant(request, "check_provider_choices").client
    scoped = "*" not in client.models
    capped = client.limits.daily_spend_usd is not None and spend_source(request.app) is not None
    if not (scoped or capped):
        return
    if not all(client.allows(model) for model in chat.candidate_models()):
        return  # the scope's 403 comes first, and says nothing of how a model outside it is served
    who = f"API key {client.name!r}" if client.name is not None else "This server"
    own = fusion_plugin_index(chat)
    for index, plugin in enumerate(chat.plugins or []):
        kind = plugin.get("id") if isinstance(plugin, dict) else None
        if index == own:
            continue  # openfusion's own, read and checked against the scope, never forwarded
        if isinstance(kind, str) and _reads_as_fusion(kind):
            raise _fusion_spelt_otherwise(f"plugins[{index}].id", kind, what="the fusion plugin", spelling='"fusion"')
        if plugin.get("enabled") is False:
            continue  # turned off: the provider runs nothing of it
        if scoped and kind not in _PLUGINS_WITHIN_SCOPE:
            raise ModelNotAllowed(
                f"This API key ({client.name}) may not send the {kind!r} plugin (plugins[{index}]): the provider "
                "runs it, and it may call models outside the key's scope.",
                param=f"plugins[{index}]",
            )
        if capped:
            raise _unbounded(who, f"plugins[{index}]", f"runs the {kind!r} plugin itself and may bill it")
    _refuse_fusion_tool_spelt_otherwise(sent["tools"] if isinstance(sent.get("tools"), list) else chat.tools)
    named = [("model", chat.model), *((f"models[{i}]", model) for i, model in enumerate(chat.models or []))]
    for param, model in named:
        if "@preset/" in model:  # OpenRouter's way of naming a preset in the slug: `@preset/x`, `vendor/m@preset/x`
            _refuse_preset(client, who, param, scoped=scoped)
    preset = sent.get("preset")
    if preset is not None:
        _refuse_preset(client, who, "preset", scoped=scoped)


def _refuse_fusion_tool_spelt_otherwise(tools: list[Any] | None) -> None:
    """Raise InvalidRequest (400) for a tool whose type reads as fusion's server tool (`"OpenRouter:Fusion"`,
    `"openrouter:fusion "`; openfusion's own spelling is tool mode, never a pass-through): a pass-through forwards it,
    and a provider may run its own fusion with the models it names. (`tools`: as the provider gets them.)"""
    for index, tool in enumerate(tools or []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and _reads_as_fusion(kind):
            what = "fusion's server tool"
            raise _fusion_spelt_otherwise(f"tools[{index}].type", kind, what=what, spelling=repr(FUSION_TOOL_TYPES[0]))


def _fusion_spelt_otherwise(param: str, kind: str, *, what: str, spelling: str) -> InvalidRequest:
    """The 400 for fusion named another way than openfusion's own spelling: a pass-through would forward it."""
    return InvalidRequest(
        f"Invalid value for '{param}': {what} is spelt {spelling}; a provider may read {kind!r} as its own fusion "
        "and call models the key's scope and spend cap never checked.",
        param=param,
    )


def _refuse_preset(client: Client, who: str, param: str, *, scoped: bool) -> None:
    """Raise for a provider's preset: 403 under a scope (it chooses its own models), else 402 (no cap can bound it)."""
    if scoped:
        raise ModelNotAllowed(
            f"This API key ({client.name}) may not use a provider's preset ({param!r}): it chooses its own models, "
            "which the key's scope cannot check.",
            param=param,
        )
    raise _unbounded(who, param, "applies its own preset, which chooses models and settings unpriced here")


def _reads_as_fusion(kind: str) -> bool:
    """Whether a plugin id another reader may take for fusion's (`"Fusion"`, `" fusion "`, `"openrouter:fusion"`)."""
    return "fusion" in kind.lower()


def _unbounded(who: str, param: str, what: str) -> CostLimitExceeded:
    return CostLimitExceeded(
        f"{who} has a daily spend cap, but the worst-case cost of this request cannot be bounded: the provider "
        f"{what} ({param}), apart from the tokens priced here. Leave it out, or use a key without a spend cap.",
        param=param,
        code="cost_unbounded",
    )


def key_scope(request: Request) -> Callable[[str], bool]:
    """Whether the request's key may use a model slug (any, on a server without keys)."""
    grant: Grant | None = request.scope.get("state", {}).get(_GRANT)
    return grant.client.allows if grant is not None else _anything


def _anything(slug: str) -> bool:
    return True


def check_preset_scope(request: Request, ask: FusionAsk) -> None:
    """Raise ModelNotAllowed (403) when the key may not use the preset a fusion request runs, whether it exists or not.

    Checked before anything reads a preset: the answer depends on the key and the request alone, so a key learns
    nothing of a preset outside its scope (neither its panel nor that it exists; the message names the preset as
    the client did, so an alias or the default gives no configured name away). A fusion slug that names no
    preset is left to the 404, which lists only the presets in scope.
    """
    client = _required_grant(request, "check_preset_scope").client
    if ask.preset is not None and not client.allows(f"fusion/{ask.preset}"):
        raise ModelNotAllowed(
            f"This API key ({client.name}) is not allowed to use {ask.preset_named}.", param=ask.preset_param
        )


def check_request_scope(request: Request, reach: Reach) -> None:
    """Raise ModelNotAllowed (403) when the request's key may not use a model it names: for a route that calls no
    model through `admit` (counting tokens), but may still reach one's provider."""
    check_scope(_required_grant(request, "check_request_scope").client, requested_models(reach))


def check_metrics_reader(request: Request) -> None:
    """Raise MetricsNotAllowed (403) unless the request's key may read /metrics (any caller without keys)."""
    grant: Grant | None = request.scope.get("state", {}).get(_GRANT)
    if grant is not None and not grant.client.reads_metrics:
        raise MetricsNotAllowed(
            f"Key {grant.client.name!r} may not read /metrics: it shows every key's traffic and spend. "
            "Use an admin key, or a key with `metrics = true` in its [[keys]] entry."
        )


def _required_grant(request: Request, caller: str) -> Grant:
    """The request's grant, which AccessMiddleware sets before any route runs."""
    grant: Grant | None = request.scope.get("state", {}).get(_GRANT)
    if grant is None:
        raise RuntimeError(f"{caller}() needs AccessMiddleware: call install_access(app, ...)")
    return grant


def spend_reservation(request: Request) -> Reservation | None:
    """The request's reservation against its key's daily spend cap, if it has one."""
    grant: Grant | None = request.scope.get("state", {}).get(_GRANT)
    return grant.reservation if grant is not None else None


def client_key_name(request: Request) -> str | None:
    """The calling key's configured name (never the key), e.g. for the activity record; None without keys."""
    grant: Grant | None = request.scope.get("state", {}).get(_GRANT)
    return grant.client.name if grant is not None else None


async def activity_owner(request: Request) -> str | None:
    """Whose activity the caller may read: its own key's (by name), or everyone's (None) for an admin key.

    Without client keys the server has one tenant, and everyone reads everything.
    """
    grant: Grant | None = request.scope.get("state", {}).get(_GRANT)
    if grant is None or grant.client.sees_all_activity:
        return None
    return grant.client.name


def spend_source(app: FastAPI) -> SpendSource | None:
    """The activity store, when there is one that can tell today's spend."""
    store = getattr(app.state, "activity_store", None)
    return store if isinstance(store, SpendSource) else None


def install_access(app: FastAPI, access: AccessControl, *, cors: CorsConfig) -> None:
    """Put access control (and CORS, when configured) in front of every route."""
    app.state.access = access
    app.add_middleware(AccessMiddleware, access=access)
    app.add_middleware(BrowserGuard, cors=cors)  # before the key check: a refused request costs nothing
    if cors.allow_origins:
        # Added last, so it runs first: preflights are answered without a key, and errors carry CORS headers.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors.allow_origins,
            allow_methods=["GET", "POST"],
            allow_headers=cors.allow_headers,
            expose_headers=["X-Generation-Id", "Retry-After", "X-Openfusion-Cache"],
            max_age=cors.max_age,
        )


def _presented_key(scope: Scope) -> tuple[str | None, bool]:
    """The key from `Authorization: Bearer <key>`, `x-api-key`, or, on the /activity pages only, Basic auth's password;
    and whether credentials were sent that hold no key read here (another scheme, Basic on the API, an empty one).

    A browser replays Basic credentials it has cached to any page's request here; on the API they
    would let another site's page spend on the user's key. `x-api-key` is how Anthropic's clients
    (Claude Code among them) send their key; `Authorization` wins when both are sent.
    """
    api_key: str | None = None
    sent = False
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            api_key = value.decode("latin-1").strip() or None
            sent = True
        elif name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            credentials = credentials.strip()
            if scheme.lower() == "bearer":
                return credentials or None, not credentials
            if scheme.lower() == "basic" and is_activity_page(route_path(scope)):
                try:
                    decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    return None, True
                password = decoded.partition(":")[2]
                return password or None, not password
            return None, True
    return api_key, sent and api_key is None


def _count_refusal(scope: Scope, reason: str) -> None:
    """Count a refused authentication in the app's metrics (once its lifespan has made them)."""
    state = getattr(getattr(scope.get("app"), "state", None), "openfusion", None)
    if state is not None:
        state.metrics.count_auth_refusal(reason)


def _conflicting_keys(scope: Scope) -> bool:
    """Whether the request repeats Authorization or x-api-key with different values: the first and the last of a
    repeated header were each taken by some server, so which key was meant is anyone's guess."""
    seen: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in (b"authorization", b"x-api-key") and seen.setdefault(name, value) != value:
            return True
    return False


def _client_address(scope: Scope) -> str | None:
    """The client's IP address (a trusted proxy's X-Forwarded-For already applied by the server), if known."""
    client = scope.get("client")
    return str(client[0]) if client else None


def refusal_response(error: OpenFusionError, scope: Scope) -> Response:
    """The answer to a request refused by the key check, in its path's error shape."""
    response = error_response(error, scope)
    if isinstance(error, AuthenticationFailed):
        # Basic lets a person open the /activity pages in a browser with the key as password.
        scheme = "Basic" if is_activity_page(route_path(scope)) else "Bearer"
        response.headers["WWW-Authenticate"] = f'{scheme} realm="openfusion"'
    return response
