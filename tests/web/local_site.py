"""A local test web site (served on loopback by uvicorn) and doubles for DNS and the HTTP transport."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import socket
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from web.pages import article_html, costly_pdf, make_pdf

SECRET = "TOP-SECRET-METADATA-CREDENTIALS"
PDF_LINES = ["Quarterly grid report", "Curtailment fell by 34 percent."]


@dataclass
class Hit:
    """One request the site received."""

    path: str
    headers: dict[str, str]


@dataclass
class Site:
    """The site's app and what it has received."""

    hits: list[Hit] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [hit.path for hit in self.hits]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
            self.hits.append(Hit(path=scope["path"], headers=headers))
        await _APP(scope, receive, send)


def _text(body: str, media_type: str) -> Response:
    return Response(body, media_type=media_type)


async def _infinite(_: Request) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        chunk = b"endless text " * 5000
        while True:  # never ends: only the reader's byte cap stops it
            yield chunk
            await asyncio.sleep(0)

    return StreamingResponse(body(), media_type="text/plain")


async def _drip(_: Request) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(200):  # a byte every 50 ms: each read is quick, the whole is far too slow
            yield b"x"
            await asyncio.sleep(0.05)

    return StreamingResponse(body(), media_type="text/plain")


async def _slow(_: Request) -> Response:
    await asyncio.sleep(3)
    return PlainTextResponse("too late")


def _redirect_loopback_ip(request: Request) -> Response:
    # The same server, but by a raw loopback IP the test config does not allow.
    return RedirectResponse(f"http://127.0.0.1:{request.url.port}/secret", status_code=302)


def _loop(request: Request) -> Response:
    step = int(request.path_params["step"])
    return RedirectResponse(f"/redirect/loop/{step + 1}", status_code=302)


_GZIP_BOMB = gzip.compress(b"a" * 20_000_000, compresslevel=9)

_APP = Starlette(
    routes=[
        Route("/article", lambda _: _text(article_html(), "text/html; charset=utf-8")),
        Route("/plain", lambda _: _text("Plain facts.\nLine two.", "text/plain; charset=utf-8")),
        Route("/json", lambda _: Response(orjson.dumps({"b": [1, 2], "a": "x"}), media_type="application/json")),
        Route("/pdf", lambda _: Response(make_pdf(PDF_LINES, title="Grid report"), media_type="application/pdf")),
        Route("/image", lambda _: Response(b"\x89PNG\r\n\x1a\n" + bytes(64), media_type="image/png")),
        Route("/unlabelled-html", lambda _: Response(article_html().encode(), media_type="application/octet-stream")),
        Route("/unlabelled-binary", lambda _: Response(bytes(range(256)) * 4, media_type="application/octet-stream")),
        Route("/missing", lambda _: PlainTextResponse("not here", status_code=404)),
        Route("/secret", lambda _: PlainTextResponse(SECRET)),
        Route("/host", lambda request: PlainTextResponse(f"host={request.headers.get('host')}")),
        Route("/cookie", lambda _: _with_cookie()),
        Route("/echo-cookie", lambda request: PlainTextResponse(f"cookie={request.headers.get('cookie')}")),
        Route("/redirect/ok", lambda _: RedirectResponse("/article", status_code=302)),
        Route("/redirect/metadata", lambda _: RedirectResponse("http://169.254.169.254/latest/meta-data/", 302)),
        Route("/redirect/rebound", lambda _: RedirectResponse("http://rebound.test/secret", status_code=302)),
        Route("/redirect/loopback-ip", _redirect_loopback_ip),
        Route("/redirect/ftp", lambda _: RedirectResponse("ftp://example.com/file", status_code=301)),
        Route("/redirect/loop/{step}", _loop),
        Route("/infinite", _infinite),
        Route("/drip", _drip),
        Route("/slow", _slow),
        Route("/gzip-bomb", lambda _: _gzip_bomb()),
        Route("/deflate/{framing}", lambda request: _deflated(request.path_params["framing"])),
        Route("/encoded/{coding}", lambda request: _encoded_as(request.path_params["coding"])),
        Route("/big-pdf", lambda _: _big_pdf()),
        Route("/costly-pdf", lambda _: Response(costly_pdf(), media_type="application/pdf")),
        Route("/five-pages-pdf", lambda _: Response(costly_pdf(pages=5, operators=1), media_type="application/pdf")),
    ]
)


def _with_cookie() -> Response:
    response = PlainTextResponse("cookie set")
    response.set_cookie("session", "abc123")
    return response


def _gzip_bomb() -> Response:
    return Response(_GZIP_BOMB, media_type="text/plain", headers={"Content-Encoding": "gzip"})


def _deflated(framing: str) -> Response:
    # "deflate" is zlib-wrapped by the RFC, raw in some servers: both are read.
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS if framing == "zlib" else -zlib.MAX_WBITS)
    body = compressor.compress(b"Deflated facts.") + compressor.flush()
    return Response(body, media_type="text/plain", headers={"Content-Encoding": "deflate"})


def _encoded_as(coding: str) -> Response:
    # A coding the fetcher never asked for, or a stack of them: the body is gzip either way.
    return Response(gzip.compress(b"Encoded facts."), media_type="text/plain", headers={"Content-Encoding": coding})


def _big_pdf() -> Response:
    # Declares 50 MB; a fetcher that trusts its cap refuses before reading any of it.
    return Response(make_pdf(PDF_LINES), media_type="application/pdf", headers={"Content-Length": str(50 << 20)})


def off_loopback(address: object) -> str | None:
    """The host of an IP socket address that is not loopback (None for loopback and non-IP sockets)."""
    if not isinstance(address, tuple):
        return None  # a Unix socket path
    host = str(address[0])
    try:
        return None if ipaddress.ip_address(host.split("%")[0]).is_loopback else host
    except ValueError:
        return host


class FakeResolver:
    """DNS for tests: a table of names to answers; a list of answer lists is consumed one lookup at a time."""

    def __init__(self, table: dict[str, Sequence[str] | Sequence[Sequence[str]]]) -> None:
        self.table = {name: list(answers) for name, answers in table.items()}
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        answers = self.table.get(host)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if isinstance(answers[0], str):
            return [str(answer) for answer in answers]
        current = answers.pop(0) if len(answers) > 1 else answers[0]
        return list(current)


class RecordingTransport(httpx.MockTransport):
    """Stands in for the network: records every request it is asked to send, never connects anywhere."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        respond = handler or (
            lambda _: httpx.Response(200, text="a public page", headers={"content-type": "text/plain"})
        )

        def record(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            response = respond(request)
            # Handed over unread, as from the network: the fetcher reads a body's raw bytes as they come.
            return httpx.Response(response.status_code, headers=response.headers, stream=_Unread(response.content))

        super().__init__(record)


class _Unread(httpx.AsyncByteStream):
    """A body not yet read (httpx reads a response built from bytes at once)."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body
