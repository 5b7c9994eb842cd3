"""The HTTP server's connection protocol: uvicorn's httptools protocol, with writes coalesced and limits kept.

Writes: see `coalesced_writes`.

Limits (the `[server]` settings): uvicorn's httptools protocol bounds neither the size nor the number
of a request's headers, nor the time a client takes to send them or a body, and never closes a
connection that has not sent its first request: a few hundred idle or trickling connections held a
server's every file descriptor, and one endless header (or a chunked body's trailer) grew it by hundreds
of MiB. Here headers, and what a body sends besides its data, are counted as they arrive (431 past the
limit), each request has a deadline for its headers and one for its body (408), and the server holds at
most `max_connections`: a new connection beyond that displaces the longest-idle one, or, when every
connection is busy, may ask only the health probes.

Errors: a request the parser cannot read (a bad request line, header or chunked encoding) was answered in
uvicorn's plain text; like every refusal here it is now answered in the error shape of its path, with the
parser's reason. Requests a client pipelined before it were read whole: each gets its answer first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from openfusion.api.access import OPEN_PATHS
from openfusion.api.coalesced_writes import CoalescedWrites
from openfusion.api.server_limits import ConnectionBudget, fit_connections, refusal, refusal_app
from openfusion.errors import (
    HeadersTooLarge,
    InvalidRequest,
    OpenFusionError,
    PayloadTooLarge,
    RequestTimeout,
    ServerBusy,
)
from openfusion.settings import ServerSettings, Settings

try:
    from httptools import HttpParserError, HttpParserUpgrade
except ImportError:  # without httptools the server runs uvicorn's h11 protocol, not this one (see `http_protocol`)
    HttpParserError = HttpParserUpgrade = Exception

log = logging.getLogger("openfusion")

_PROBE_PATHS = frozenset(path.encode("ascii") for path in OPEN_PATHS)
_BUSY = refusal_app(ServerBusy("The server is at its connection limit; try again shortly.", code="server_busy"))


class _HeaderLimit(Exception):
    """Raised inside a parser callback to stop parsing a request refused for its headers (`_refusal` says why)."""


def malformed(reason: str) -> OpenFusionError:
    """The error for a request the HTTP parser refused; `reason` is llhttp's, a fixed phrase with no request data."""
    reason = reason.rstrip(".")
    if reason == "Content-Length overflow":
        return PayloadTooLarge("Request body too large: its Content-Length does not fit in 64 bits.")
    return InvalidRequest(f"The request is not valid HTTP/1.1: {reason}.", code="malformed_request")


class LimitedConnection:
    """The limits of one connection, mixed in before uvicorn's HttpToolsProtocol (see `http_protocol`)."""

    budget: ConnectionBudget  # shared by every connection of one server
    server_settings: ServerSettings

    def connection_made(self, transport: asyncio.Transport) -> None:
        self._reading_headers = True
        self._asked = False  # the request whose headers are being read has begun (its first byte was parsed)
        self._header_bytes = self._header_size = self._header_count = 0
        self._framing_bytes = 0  # read since the body last moved (see `data_received`)
        self._unparsed_body = 0  # what is left of a body the parser skipped (see `_ignore_upgrade`)
        self._refusal: OpenFusionError | None = None
        # Set once a request cannot be read: what is written when the answers owed before it have been sent.
        self._broken: bytes | None = None
        self._probes_only = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._counted = True
        super().connection_made(CoalescedWrites(transport, self.loop))  # type: ignore[misc, attr-defined]
        admission = self.budget.admit(self)
        if admission == "refuse":
            self._forget()
            self.transport.close()  # type: ignore[attr-defined]
            return
        self._probes_only = admission == "probes"
        self.budget.idle[self] = None
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)  # type: ignore[misc]

    def handle_websocket_upgrade(self) -> None:
        # The connection goes to uvicorn's WebSocket protocol, whose end this one never hears (`connection_lost` is
        # the new protocol's): it stops counting here. Counted, each handshake held its place in the budget for
        # good, and a thousand of them (each refused, no route takes a WebSocket) locked every client out.
        self._forget()
        super().handle_websocket_upgrade()  # type: ignore[misc]

    def evict(self) -> None:
        """Close this idle connection to make room for a new one (counted as gone at once)."""
        self._forget()
        self.transport.close()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        # uvicorn's, but a parser error is answered in JSON with llhttp's reason, after the answers owed before it,
        # and a request that asks for an upgrade the server does not make is served as an ordinary one.
        while data:
            data = self._parse(data)

    def _parse(self, data: bytes) -> bytes:
        """Feed `data` to the parser; what is left of it when the parser stopped at an ignored upgrade."""
        if self._broken is not None:
            return b""  # the parser stopped at a malformed request: nothing after it can be read
        if self._unparsed_body:
            data = self._read_unparsed_body(data)
            if not data:
                return b""
        if self._reading_headers:
            self._header_bytes += len(data)
        else:  # a body's framing, not its data: chunk sizes, extensions, and trailers (headers after a chunked body)
            self._framing_bytes += len(data)  # back to 0 as soon as body data arrives (`on_body`)
        try:
            self.parser.feed_data(data)  # type: ignore[attr-defined]
        except HttpParserUpgrade as exc:
            if self._should_upgrade():  # type: ignore[attr-defined]
                self.handle_websocket_upgrade()  # type: ignore[attr-defined]
            else:
                self._unsupported_upgrade_warning()  # type: ignore[attr-defined]
                # Not upgraded: the parser stopped where the other protocol would begin, and the rest of this read
                # is the request's body and the requests after it (see `_ignore_upgrade`).
                rest = data[exc.args[0] :] if exc.args else b""
                return rest if len(rest) < len(data) else b""  # always on: never the same bytes again
        except HttpParserError as exc:
            if self._refusal is None:
                reason = str(exc.args[0]) if exc.args else "unparseable"
                self.logger.warning("Invalid HTTP request received: %s.", reason.rstrip("."))  # type: ignore[attr-defined]
                self._refusal = malformed(reason)
            self._refuse(self._refusal)
            return b""
        if self._reading_headers and self._header_bytes > self.server_settings.max_header_bytes:
            self._refuse(self._too_large())
        elif not self._reading_headers and self._framing_bytes > self.server_settings.max_header_bytes:
            # httptools keeps an unfinished trailer in memory, as it does a header: one that never ends grew it without
            # bound until the body's deadline. Chunk headers between data are a few bytes each.
            limit = self.server_settings.max_header_bytes
            self._refuse(HeadersTooLarge(f"Request trailers (or chunk extensions) are larger than {limit} bytes."))
        return b""

    def send_400_response(self, msg: str) -> None:  # uvicorn's plain-text answer to a parser error, should it call it
        self._refuse(self._refusal or InvalidRequest(msg, code="malformed_request"))

    def on_message_begin(self) -> None:
        super().on_message_begin()  # type: ignore[misc]
        # The keep-alive timer stops when a request begins, not at every read as uvicorn stops it: blank lines, which a
        # client may send before a request (RFC 9112 2.2) and which begin none, held an idle connection open for good.
        self._unset_keepalive_if_required()  # type: ignore[attr-defined]
        self._asked = True
        self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)  # type: ignore[misc]

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.server_settings.max_headers:
            self._refusal = HeadersTooLarge(f"Too many request headers (at most {self.server_settings.max_headers}).")
            raise _HeaderLimit
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)  # type: ignore[misc]

    def on_headers_complete(self) -> None:
        ignored_upgrade = self.parser.should_upgrade() and not self._should_upgrade()  # type: ignore[attr-defined]
        if ignored_upgrade and any(name == b"transfer-encoding" for name, _ in self.headers):  # type: ignore[attr-defined]
            self._refusal = InvalidRequest(
                "A request that asks to upgrade its connection (Upgrade, other than a WebSocket) cannot have a chunked "
                "body: send it without the Upgrade header, or with a Content-Length.",
                code="malformed_request",
            )
            raise _HeaderLimit  # refused before it starts
        self._reading_headers = False
        self._cancel_timers()
        self.budget.idle.pop(self, None)
        app = self.app  # type: ignore[has-type]
        if self._probes_only and self._path() not in _PROBE_PATHS:
            self.app = _BUSY
        try:
            super().on_headers_complete()  # type: ignore[misc]
        finally:
            self.app = app
        self._body_timer = self.loop.call_later(self.server_settings.body_timeout_s, self._body_timed_out)  # type: ignore[attr-defined]
        if ignored_upgrade:
            self._ignore_upgrade()

    def on_body(self, body: bytes) -> None:
        self._framing_bytes = 0
        super().on_body(body)  # type: ignore[misc]

    def on_message_complete(self) -> None:
        if self._unparsed_body:
            return  # the parser skipped the body of a request that asked to upgrade: it ends once read here
        self._framing_bytes = 0
        super().on_message_complete()  # type: ignore[misc]
        self._cancel_timers()
        self._reading_headers = True
        self._asked = False
        self._header_bytes = self._header_size = self._header_count = 0

    def on_response_complete(self) -> None:
        # The response's last bytes leave now, not after the app's next await: what an app does once its
        # response is sent (the request's record, a background task) runs synchronously up to that await,
        # and would otherwise sit between the client and the end of its answer.
        transport = self.transport  # type: ignore[attr-defined]
        if isinstance(transport, CoalescedWrites):
            transport.flush()
        # Nothing queued: that was the last answer owed before an unreadable request, if one came.
        last_owed = self._broken is not None and not self.pipeline  # type: ignore[attr-defined]
        super().on_response_complete()  # type: ignore[misc]
        if last_owed:
            self._close_with(self._broken)  # type: ignore[arg-type]
            return
        if self._counted and not self.pipeline and not self.transport.is_closing():  # type: ignore[attr-defined]
            self.budget.idle[self] = None  # at the end: now the most recently idle

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn's two warnings per request ("Unsupported upgrade request", and a WebSocket library said missing) for
        # what is now served as sent: any client could flood the log with them. Told at debug level only.
        self.logger.debug("Upgrade to %r not made: the request is served as sent.", self._get_upgrade())  # type: ignore[attr-defined]

    def _ignore_upgrade(self) -> None:
        """Serve a request that asks to upgrade to a protocol the server does not speak as an ordinary one.

        A server may ignore Upgrade (RFC 9110, 7.8), and clients send it unasked (`curl --http2` to an http:// URL
        sends `Upgrade: h2c` with its first request). httptools, though, takes every Upgrade as done: it ends the
        request after its headers, skips its body and stops parsing. The body went to the app as empty, and what came
        after it in the same read was dropped, or, arriving later, parsed as requests of their own: a body that held
        one was served as a second request. Here the body (its Content-Length; a chunked one is refused) is read as
        the body, then the parser goes on with the next request.
        """
        for name, value in self.headers:  # type: ignore[attr-defined]
            if name == b"content-length":
                self._unparsed_body = int(value)  # llhttp has checked it: digits, one value

    def _read_unparsed_body(self, data: bytes) -> bytes:
        """Take what `data` holds of the body the parser skipped (see `_ignore_upgrade`); the rest of `data`."""
        taken = data[: self._unparsed_body]
        self._unparsed_body -= len(taken)
        self._framing_bytes = 0
        self.on_body(taken)
        if not self._unparsed_body:
            self.on_message_complete()
        return data[len(taken) :]

    def _count_header_bytes(self, size: int) -> None:
        # Headers that arrive whole in one read are measured here; `data_received` bounds the unfinished ones.
        self._header_size += size
        if self._header_size > self.server_settings.max_header_bytes:
            self._refusal = self._too_large()
            raise _HeaderLimit

    def _too_large(self) -> HeadersTooLarge:
        return HeadersTooLarge(f"Request headers are larger than {self.server_settings.max_header_bytes} bytes.")

    def _path(self) -> bytes:
        url: bytes = self.url  # type: ignore[attr-defined]
        return url.split(b"?", 1)[0]

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            timeout = self.server_settings.header_timeout_s
            self._header_timer = self.loop.call_later(timeout, self._headers_timed_out)  # type: ignore[attr-defined]

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if not self._reading_headers:
            return
        if self.flow.read_paused:  # type: ignore[attr-defined]
            # Queued behind requests pipelined before it, still being answered: the server reads nothing until their
            # answers have gone, so the rest of the headers cannot arrive meanwhile. Their time starts again.
            self._arm_header_timer()
            return
        # Begun, not by its byte count: a request whose first bytes came in the read that ended the one before it
        # has none counted (they were read before that request's end reset the count).
        if self._asked:
            timeout = self.server_settings.header_timeout_s
            self._refuse(RequestTimeout(f"The request headers took longer than {timeout:g} s to arrive."))
        else:  # nothing asked: a silent close, as for an idle keep-alive connection
            self.transport.close()  # type: ignore[attr-defined]

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self.cycle  # type: ignore[attr-defined]
        if cycle is None or not cycle.more_body:
            return
        timeout = self.server_settings.body_timeout_s
        pipeline = self.pipeline  # type: ignore[attr-defined]
        if pipeline and pipeline[0][0] is cycle:
            # Queued behind a request pipelined before it, still being answered: the server reads nothing until that
            # answer has gone, so the body cannot arrive meanwhile, however promptly it was sent. Its time starts
            # again (once the request is under way, the server reads).
            self._body_timer = self.loop.call_later(timeout, self._body_timed_out)  # type: ignore[attr-defined]
            return
        if cycle.response_started:
            self.transport.close()  # type: ignore[attr-defined]
        else:
            self._refuse(RequestTimeout(f"The request body took longer than {timeout:g} s to arrive."))
        # The app waiting for the rest of the body hears that the client is gone.
        cycle.disconnected = True
        cycle.message_event.set()

    def _refuse(self, error: OpenFusionError) -> None:
        """Answer `error` and close, once the answers owed to the requests before the refused one have been sent.

        A client may send its next requests without waiting (pipelining). Nothing after a request that cannot be
        read can be, but the requests before it were read whole: each still gets its answer, in order, then the
        refusal with `Connection: close`, and the client knows what to send again.
        """
        transport: asyncio.Transport = self.transport  # type: ignore[attr-defined]
        if transport.is_closing() or self._broken is not None:
            return
        # The error's shape is its path's (Anthropic's on /v1/messages), as far as the path has arrived.
        answer = refusal(error, self._path().decode("latin-1") if hasattr(self, "url") else "")
        cycle = self.cycle  # type: ignore[attr-defined]
        pipeline = self.pipeline  # type: ignore[attr-defined]
        if cycle is not None and not self._reading_headers:  # the refused request is `cycle` (its body)
            if cycle.response_started:
                answer = b""  # it has an answer (given without reading its body): close after it
            elif pipeline and pipeline[0][0] is cycle:  # queued (the newest), not started: it waits its turn
                pipeline.popleft()
            else:
                self._close_with(answer)  # the app waiting for the body hears that the client is gone
                return
        if (cycle is None or cycle.response_complete) and not pipeline:
            self._close_with(answer)
            return
        self._broken = answer  # written by `on_response_complete` once the last answer owed has gone
        self._cancel_timers()

    def _close_with(self, answer: bytes) -> None:
        transport: asyncio.Transport = self.transport  # type: ignore[attr-defined]
        if not transport.is_closing():
            transport.write(answer)
            transport.close()

    def _forget(self) -> None:
        self._cancel_timers()
        if self._counted:
            self._counted = False
            self.budget.idle.pop(self, None)
            self.budget.release()


def http_protocol(
    server: ServerSettings | None = None, *, upstream_connections: int = 512
) -> type[asyncio.Protocol] | str:
    """The protocol class for `uvicorn.run(http=...)`, with its own connection budget; "auto" without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn falls back to h11 itself (and these limits do not apply)
        log.warning(
            "httptools is not installed: the server runs uvicorn's h11 protocol, without the [server] connection"
            " limits (header size and count, header and body deadlines, max_connections) or JSON errors for"
            " requests the parser cannot read; install uvicorn[standard] (with httptools) to have them"
        )
        return "auto"
    server = server or ServerSettings()
    budget = fit_connections(server, upstream_connections=upstream_connections)
    namespace = {"budget": budget, "server_settings": server}
    return type("HttpProtocol", (LimitedConnection, HttpToolsProtocol), namespace)


def uvicorn_options(settings: Settings | None = None) -> dict[str, Any]:
    """The connection options of `uvicorn.run` / `uvicorn.Config` for these settings (`openfusion serve` and tests)."""
    server = settings.server if settings is not None else ServerSettings()
    upstream = settings.http.max_connections if settings is not None else 512
    options: dict[str, Any] = {
        "http": http_protocol(server, upstream_connections=upstream),
        "timeout_keep_alive": server.keep_alive_timeout_s,
    }
    if server.forwarded_allow_ips is not None:
        options["forwarded_allow_ips"] = server.forwarded_allow_ips
    return options
