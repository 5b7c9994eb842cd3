"""diagnose(): the real cause behind a transport exception, as both transports chain it."""

from __future__ import annotations

import errno
import socket
import ssl

import aiohttp
import httpx
import pytest
from aiohttp.client_reqrep import ConnectionKey

from openfusion.upstream.failures import diagnose

KEY = ConnectionKey("up.test", 443, True, True, None, None, None)


def chained(outer: httpx.HTTPError, *causes: BaseException) -> httpx.HTTPError:
    """`outer` raised from causes[0], raised from causes[1], … (as `raise … from …` leaves them)."""
    link: BaseException = outer
    for cause in causes:
        link.__cause__ = cause
        link = cause
    return outer


def aiohttp_connector(os_error: OSError, kind: type[aiohttp.ClientConnectorError] = aiohttp.ClientConnectorError):
    return kind(KEY, os_error)


@pytest.mark.parametrize(
    ("exc", "cause", "sent"),
    [
        # httpx-aiohttp: every connection error arrives as ConnectTimeout
        (chained(httpx.ConnectTimeout("x"), aiohttp_connector(socket.gaierror(-2, "Name or service not known"),
                                                              aiohttp.ClientConnectorDNSError),
                 socket.gaierror(-2, "Name or service not known")), "name_not_resolved", False),
        (chained(httpx.ConnectTimeout("x"), aiohttp_connector(ConnectionRefusedError(111, "refused")),
                 ConnectionRefusedError(111, "refused")), "connection_refused", False),
        (chained(httpx.ConnectTimeout("x"), aiohttp_connector(OSError(errno.ENETUNREACH, "unreachable")),
                 OSError(errno.ENETUNREACH, "Network is unreachable")), "network_unreachable", False),
        (chained(httpx.ConnectTimeout("x"), aiohttp.ConnectionTimeoutError("slow")), "connect_timeout", False),
        (chained(httpx.ReadTimeout("x"), aiohttp.SocketTimeoutError("slow")), "read_timeout", True),
        (chained(httpx.ConnectTimeout("x"), aiohttp.ServerDisconnectedError()), "connection_closed", True),
        (chained(httpx.ConnectTimeout("x"), aiohttp.ClientOSError(104, "reset"), ConnectionResetError(104, "reset")),
         "connection_reset", True),
        # TLS to a server speaking plain HTTP: the handshake is reset, during the connect phase
        (chained(httpx.ConnectTimeout("x"), aiohttp_connector(ConnectionResetError()), ConnectionResetError()),
         "connection_reset", False),
        # httpx's own transport
        (chained(httpx.ConnectError("x"), socket.gaierror(-2, "Name or service not known")), "name_not_resolved",
         False),
        (chained(httpx.ConnectError("x"), OSError("All connection attempts failed"), ConnectionRefusedError()),
         "connection_refused", False),
        (chained(httpx.ConnectError("x"), ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER]")), "tls_error", False),
        (httpx.ConnectTimeout("x"), "connect_timeout", False),
        (chained(httpx.ReadTimeout("x"), TimeoutError()), "read_timeout", True),
        (httpx.PoolTimeout("x"), "pool_timeout", False),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), "connection_closed", True),
        (httpx.ReadError("x"), "connection_lost", True),
    ],
)  # fmt: skip
def test_the_cause_and_whether_the_request_left(exc: httpx.HTTPError, cause: str, sent: bool) -> None:
    failure = diagnose(exc)
    assert (failure.cause, failure.sent) == (cause, sent)
    assert failure.timed_out == cause.endswith("_timeout")


def test_a_certificate_failure_says_why() -> None:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "unable to get local issuer certificate"

    failure = diagnose(chained(httpx.ConnectError("x"), error))

    assert failure.cause == "tls_error"
    assert failure.description == "TLS certificate not accepted: unable to get local issuer certificate"
