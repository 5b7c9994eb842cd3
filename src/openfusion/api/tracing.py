"""The HTTP edge of tracing: a server span around every request, continuing the caller's `traceparent` alone.

Imported only when tracing is configured (it needs the `openfusion[otel]` extra).
"""

from __future__ import annotations

from fastapi import FastAPI
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openfusion.api.access import OPEN_PATHS
from openfusion.api.cache import CACHE_HEADER
from openfusion.api.handlers import route_path
from openfusion.observability.otel import PROPAGATOR, Tracing
from openfusion.observability.tracing import reset_request_spans, set_request_spans

_UNTRACED = OPEN_PATHS | {"/metrics"}  # probes and scrapes: many, periodic, of no interest
# Only the caller's `traceparent` is read. Its `tracestate` is the caller's opaque data (its vendors' entries, which
# may name users or tenants): continued, it would go out with every upstream call, to every provider of a run, third
# parties chosen for answers and not for the caller's tracing data; a sampler may also read it (OpenTelemetry's
# `ot` entry), and no client steers sampling here. W3C lets a participant drop entries it was sent.
_PROPAGATED = (b"traceparent",)
_CACHE = CACHE_HEADER.lower().encode("latin-1")


class TracingMiddleware:
    """A pure ASGI middleware: the server span covers the whole response, to its last byte or the client leaving."""

    def __init__(self, app: ASGIApp, *, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = self.tracing.tracer
        if scope["type"] != "http" or tracer is None or route_path(scope) in _UNTRACED:
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"] if name in _PROPAGATED
        }
        method = scope["method"]
        server = tracer.start_span(
            method,  # named after its route once routing found one (a path may hold ids, or anything)
            context=PROPAGATOR.extract(carrier) if carrier else otel_context.Context(),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": route_path(scope), "url.scheme": scope["scheme"]},
        )
        spans = self.tracing.request(server)
        token = set_request_spans(spans)

        async def traced_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                server.set_attribute("http.response.status_code", status)
                if status >= 500:
                    server.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
                for name, value in message.get("headers", ()):
                    if name.lower() == _CACHE:  # the result cache's hit, miss or bypass
                        server.set_attribute("openfusion.cache", value.decode("latin-1"))
            await send(message)

        try:
            await self.app(scope, receive, traced_send)
        except BaseException as exc:
            server.set_attribute("error.type", type(exc).__name__)
            raise
        finally:
            reset_request_spans(token)
            if (path := _route(scope)) is not None:
                server.set_attribute("http.route", path)
                server.update_name(f"{method} {path}")
            spans.finish()
            server.end()


def _route(scope: Scope) -> str | None:
    """The matched route's path template, once routing found one."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    if "endpoint" not in scope:  # no route matched
        return None
    path = route_path(scope)  # a plain route (`add_route`): its path, its parameters put back as names
    for name, value in scope.get("path_params", {}).items():
        path = path.replace(str(value), "{" + name + "}")
    return path


def install_tracing(app: FastAPI, tracing: Tracing) -> None:
    """Trace every request but the probes (added last: the span covers the other middleware too)."""
    app.add_middleware(TracingMiddleware, tracing=tracing)
