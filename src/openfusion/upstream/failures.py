"""Why an upstream call failed below HTTP: the real cause behind a transport exception.

The aiohttp transport (`transport.py`, mapping errors as httpx-aiohttp did) reports every aiohttp
connection error as `httpx.ConnectTimeout`, so a name that does not resolve, a refused port and a
failed TLS handshake all look like a timeout; the cause chain still holds the socket or TLS error
that says what happened.
"""

from __future__ import annotations

import errno
import socket
import ssl
from dataclasses import dataclass

import aiohttp
import httpx

# Causes that only ever happen before a request is sent.
_BEFORE_SENDING = frozenset(
    {"name_not_resolved", "connection_refused", "network_unreachable", "connect_timeout", "pool_timeout"}
)
_UNREACHABLE_ERRNOS = {errno.ENETUNREACH: "network unreachable", errno.EHOSTUNREACH: "no route to host"}
_TIMEOUT_PHASES: tuple[tuple[type[httpx.TimeoutException], str], ...] = (
    (httpx.ConnectTimeout, "connect"),
    (httpx.ReadTimeout, "read"),
    (httpx.WriteTimeout, "write"),
    (httpx.PoolTimeout, "pool"),
)


@dataclass(frozen=True)
class TransportFailure:
    """A transport failure, diagnosed: a stable `cause` code and the words for a message."""

    cause: str  # e.g. name_not_resolved, connection_refused, tls_error, read_timeout
    description: str  # e.g. "host name not resolved (DNS)"
    sent: bool = True  # False: the connection was never made, so the provider never saw (or billed) the request

    @property
    def timed_out(self) -> bool:
        return self.cause == "timeout" or self.cause.endswith("_timeout")


def diagnose(exc: httpx.HTTPError) -> TransportFailure:
    """The real cause of a transport exception, read from its chain of causes."""
    chain = _chain(exc)
    # httpx's own transport raises ConnectError for the connect phase; aiohttp a ClientConnectorError.
    connecting = isinstance(exc, httpx.ConnectError) or any(
        isinstance(link, aiohttp.ClientConnectorError) for link in chain
    )
    cause, description = _cause(exc, chain, connecting=connecting)
    return TransportFailure(cause, description, sent=not connecting and cause not in _BEFORE_SENDING)


def _cause(exc: httpx.HTTPError, chain: list[BaseException], *, connecting: bool) -> tuple[str, str]:
    for link in chain:
        found = _specific(link)
        if found is not None:
            return found
    if isinstance(exc, httpx.TimeoutException) and _is_timeout(exc, chain):
        phase = "connect" if connecting else next((name for kind, name in _TIMEOUT_PHASES if isinstance(exc, kind)), "")
        return (f"{phase}_timeout", f"{phase} timeout") if phase else ("timeout", "timeout")
    if any(isinstance(link, aiohttp.ServerDisconnectedError | httpx.RemoteProtocolError) for link in chain):
        return "connection_closed", "the server closed the connection"
    if connecting:
        return "connect_error", f"connection failed ({_name(chain[-1])})"
    return "connection_lost", f"connection lost ({_name(chain[-1])})"


def _specific(link: BaseException) -> tuple[str, str] | None:
    """A cause that names itself: DNS, TLS, a refused or reset connection, an unreachable network."""
    if isinstance(link, aiohttp.ClientError):
        return None  # aiohttp's wrappers (some are OSErrors too) chain the socket or TLS error itself
    if isinstance(link, socket.gaierror):
        return "name_not_resolved", "host name not resolved (DNS)"
    if isinstance(link, ssl.SSLError):
        # `reason` (e.g. WRONG_VERSION_NUMBER) and `verify_message` are set by the ssl module, not by every raiser.
        reason = getattr(link, "reason", None) or _name(link)
        if isinstance(link, ssl.SSLCertVerificationError):
            return "tls_error", f"TLS certificate not accepted: {getattr(link, 'verify_message', None) or reason}"
        return "tls_error", f"TLS failed: {reason}"
    if isinstance(link, ConnectionRefusedError):
        return "connection_refused", "connection refused"
    if isinstance(link, ConnectionResetError):
        return "connection_reset", "connection reset"
    if isinstance(link, OSError) and link.errno in _UNREACHABLE_ERRNOS:
        return "network_unreachable", _UNREACHABLE_ERRNOS[link.errno]
    return None


def _is_timeout(exc: httpx.TimeoutException, chain: list[BaseException]) -> bool:
    if not isinstance(exc, httpx.ConnectTimeout) or len(chain) == 1:
        return True
    # The aiohttp transport's ConnectTimeout is a timeout only when a timeout caused it.
    return any(isinstance(link, TimeoutError) or _name(link).endswith("Timeout") for link in chain[1:])


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain and len(chain) < 16:
        chain.append(link)
        link = link.__cause__ or link.__context__
    return chain


def _name(exc: BaseException) -> str:
    return type(exc).__name__
