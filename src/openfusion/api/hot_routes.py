"""The app, with a short way in for the routes that carry the load: the POSTs that call models.

Through FastAPI a request passes about a dozen nested ASGI layers before its route (the app, the server
error middleware, FastAPI's telemetry and body-limit layers, the browser guard, the key check, the
exception middleware, an exit stack, the router, the included router, the route, the route's own
exception layer), and every message a response sends goes back out through four of them: for a
streamed fusion, ~25 messages. `HotRouteApp` serves a POST to a route of the model-calling surfaces
in one call that does what those layers do for it — the browser guard (refusal and private headers),
the key check and its request count (slots given back when the response has ended), the route, and an
error mapped by the app's own exception handlers in the path's dialect — and hands the response
uvicorn's `send` as it is.

Everything else goes through the whole stack, and so does every request when the app has a middleware
of its own beyond the browser guard and the key check (tracing, CORS), a `root_path`, or FastAPI's
native telemetry: the short way is taken only where it is the same as the long one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from openfusion.api.access import AccessMiddleware, open_grant, refusal_response
from openfusion.api.browser import BrowserGuard, private_headers
from openfusion.api.handlers import error_response
from openfusion.errors import OpenFusionError

_OWN_MIDDLEWARE = frozenset({BrowserGuard, AccessMiddleware})

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Exception], Awaitable[Response]]


class HotRouteApp(FastAPI):
    """FastAPI, serving the POST routes of the routers given to `serve_directly` without its middleware stack."""

    _direct: dict[str, Endpoint] | None = None  # path → endpoint, of the routers given to serve_directly
    _hot: dict[str, Endpoint] | None = None  # the same once serving; empty when the short way is not the same
    _guard: BrowserGuard
    _handlers: dict[Any, Handler]
    _status_handlers: dict[int, Handler]
    _server_error: Handler | None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            hot = self._hot if self._hot is not None else self._hot_routes()
            endpoint = hot.get(scope["path"]) if hot else None
            if endpoint is not None:
                await self._serve(endpoint, scope, receive, send)
                return
        elif scope["type"] == "lifespan" and self._hot is None:
            self._hot_routes()  # before serving (the routes and middleware are final by now), not at the first request
        await super().__call__(scope, receive, send)

    def serve_directly(self, *routers: APIRouter) -> None:
        """Include these routers, and serve their POST routes without a path parameter the short way."""
        direct = self._direct = self._direct or {}
        for router in routers:
            self.include_router(router)
            for route in router.routes:
                if isinstance(route, Route) and not route.param_convertors and "POST" in (route.methods or ()):
                    direct[route.path] = route.endpoint

    def _hot_routes(self) -> dict[str, Endpoint]:
        """Decided as the app starts (or at the first request, for a server without lifespan events), when every route
        and middleware is in place."""
        hot: dict[str, Endpoint] = {}
        middleware = {entry.cls for entry in self.user_middleware}
        if middleware <= _OWN_MIDDLEWARE and not self.root_path and not self._native_telemetry.enabled():
            hot = dict(self._direct or {})
        guards = [entry for entry in self.user_middleware if entry.cls is BrowserGuard]
        if len(guards) != 1 or not any(entry.cls is AccessMiddleware for entry in self.user_middleware):
            hot = {}  # the short way does what these two do; without them the app is not one it knows
        else:
            self._guard = BrowserGuard(self.router, **guards[0].kwargs)  # type: ignore[arg-type]
            handlers = dict(self.exception_handlers)
            self._server_error = handlers.pop(500, None) or handlers.pop(Exception, None)
            self._status_handlers = {key: h for key, h in handlers.items() if isinstance(key, int)}
            self._handlers = {key: h for key, h in handlers.items() if not isinstance(key, int)}
        self._hot = hot
        return hot

    async def _serve(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        request = Request(scope, receive, send)
        grant = None
        try:
            try:
                refusal = self._guard.refusal(scope)
                if refusal is not None:
                    response = error_response(refusal, scope)
                else:
                    try:
                        grant = await open_grant(self.state.access, scope)
                    except OpenFusionError as exc:
                        response = refusal_response(exc, scope)
                    else:
                        response = await endpoint(request)
            except Exception as exc:
                response = await self._error_response(exc, request, send)  # raises what no handler takes
            # Once the response has begun, an error is uvicorn's: it logs it and closes the connection.
            await _private(response)(scope, receive, send)
        finally:
            if grant is not None:
                await grant.release()

    async def _error_response(self, exc: Exception, request: Request, send: Send) -> Response:
        """The app's own handler's answer, as its exception middleware gives it; else its 500, then raise."""
        handler = self._status_handlers.get(exc.status_code) if isinstance(exc, HTTPException) else None
        if handler is None:
            handler = next((self._handlers[cls] for cls in type(exc).__mro__ if cls in self._handlers), None)
        if handler is not None:
            response = await handler(request, exc)
            exc.__traceback__ = None  # reused exception instances accumulate tracebacks across requests
            return response
        if self._server_error is not None:  # as Starlette's server error middleware: answer, then re-raise
            await _private(await self._server_error(request, exc))(request.scope, request.receive, send)
        raise exc


def _private(response: Response) -> Response:
    """The response with the browser guard's headers (no caching, no framing)."""
    response.raw_headers = private_headers(response.raw_headers)
    return response
