"""The server's connection budget: how many connections it holds, which idle one gives way, and raw refusals.

A refusal here is written straight to the socket, before any ASGI app has seen the request (its
headers may not even be complete), but in the error shape of the request's path like every other
error: Anthropic's on /v1/messages, OpenAI's elsewhere (and when the path is not known yet).
"""

from __future__ import annotations

import http
import logging
import resource
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from openfusion.api.dialects import ERROR_DIALECTS
from openfusion.api.handlers import dialect_for_path, route_path
from openfusion.errors import OpenFusionError
from openfusion.settings import ServerSettings

log = logging.getLogger("openfusion")

# File descriptors kept for everything but client connections: the fetch client's pool, the
# activity database, Redis, log files, the listening socket, a subprocess's pipes.
_SPARE_FILES = 128
_MIN_CONNECTIONS = 32
# How high `raise_open_file_limit` goes when the hard limit is unlimited.
_OPEN_FILES_CEILING = 1 << 20


class Evictable(Protocol):
    """A connection that can be told to go."""

    def evict(self) -> None: ...


@dataclass
class ConnectionBudget:
    """One server's open connections: at most `max_connections`, plus `probe_connections` for the probes."""

    max_connections: int
    probe_connections: int
    open: int = 0
    # Connections without a request in progress, longest-idle first (a dict keeps insertion order).
    idle: dict[Evictable, None] = field(default_factory=dict)

    def admit(self, connection: Evictable) -> str:
        """Count a new connection: "ok", "probes" (it may only ask the health probes) or "refuse"."""
        self.open += 1
        if self.open <= self.max_connections:
            return "ok"
        oldest = next(iter(self.idle), None)
        if oldest is not None:
            # The longest-idle connection gives way: an idle flood cannot lock clients out.
            self.idle.pop(oldest)
            oldest.evict()
            return "ok"
        if self.open <= self.max_connections + self.probe_connections:
            return "probes"
        return "refuse"

    def release(self) -> None:
        """A counted connection has gone (closed, evicted or refused)."""
        self.open -= 1


def fit_connections(server: ServerSettings, *, upstream_connections: int) -> ConnectionBudget:
    """The connection budget, `max_connections` lowered (with a warning) to what the open-file limit allows."""
    wanted = server.max_connections + server.probe_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = wanted if soft == resource.RLIM_INFINITY else soft - upstream_connections - _SPARE_FILES
    if room >= wanted:
        return ConnectionBudget(server.max_connections, server.probe_connections)
    probes = min(server.probe_connections, max(1, room // 8))
    fitted = max(_MIN_CONNECTIONS, room - probes)
    log.warning(
        "the open-file limit (%d) leaves room for %d client connections: max_connections lowered from %d "
        "(raise the limit with `ulimit -n` or the service's LimitNOFILE)",
        soft,
        fitted,
        server.max_connections,
    )
    return ConnectionBudget(fitted, probes)


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit (as Go and nginx do); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _OPEN_FILES_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # e.g. above the kernel's nr_open: keep what we have
            return soft
        return target
    return soft


def refusal(error: OpenFusionError, path: str = "") -> bytes:
    """A complete HTTP/1.1 response for `error` to a request for `path` (its route path) that closes the connection."""
    dialect = dialect_for_path(path, ERROR_DIALECTS)
    body, status = orjson.dumps(dialect.body(error)), dialect.status(error)
    head = [
        f"HTTP/1.1 {status} {_phrase(status)}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "cache-control: no-store",
        "connection: close",
    ]
    if error.retry_after is not None:
        head.append(f"retry-after: {max(1, round(error.retry_after))}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


def _phrase(status: int) -> str:
    """A status line's reason phrase; Anthropic's 529 is in no registry (the phrase is informative only)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Overloaded" if status == 529 else "Error"


def refusal_app(error: OpenFusionError) -> Any:
    """An ASGI app that answers every request with `error` (in its path's shape) and closes the connection."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        dialect = dialect_for_path(route_path(scope), ERROR_DIALECTS)
        body = orjson.dumps(dialect.body(error))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"cache-control", b"no-store"),
            (b"connection", b"close"),
        ]
        if error.retry_after is not None:
            headers.append((b"retry-after", str(max(1, round(error.retry_after))).encode("ascii")))
        await send({"type": "http.response.start", "status": dialect.status(error), "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app
