"""An httpx transport over aiohttp's client: httpx's API for the callers, aiohttp's connection pool below.

httpx-aiohttp's transport did the same with more per call than an API client needs: a cookie jar fed
from every response, a new timeout object, URL and header conversions, a generator layer (and an
exception-mapping context manager) per body read. Here a URL is parsed once per endpoint, a timeout
built once per set of limits, the headers handed over as one multidict, and a body read straight from
aiohttp's buffer: `read_body` reads it whole, `body_blocks` hands over each read as it came, both
without httpx's decoder layers when the body has no content encoding (a gzip or br body still goes
through httpx's decoders).

The upstream client's own calls skip httpx's request and response objects altogether (`post`): the
headers go out as a multidict built once per endpoint, and the answer comes back as an `AiohttpReply`,
which has what the client reads of an `httpx.Response` (status, reason, headers, body, close) and builds
nothing more. Per fusion (five calls) that was ~6% of its instructions. An encoded answer still comes
back as an `httpx.Response`, decoded by httpx; every other caller (web search and fetch, price listings)
uses the transport through `httpx.AsyncClient` as before.

Exceptions are mapped as httpx-aiohttp maps them (a failed connection is an `httpx.ConnectTimeout`
whose cause chain holds the real error; `failures.diagnose` reads it from there).
"""

from __future__ import annotations

# The codec `socket.getaddrinfo` encodes a host name with: imported with the transport, not by the first connection
# (a worker spawned with its listening socket made has resolved no name before).
import encodings.idna  # noqa: F401
import functools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import httpx
from multidict import CIMultiDict
from yarl import URL

from openfusion.upstream.read_timeout import use_lazy_read_timeout
from openfusion.upstream.vectored_writes import use_vectored_writes

# aiohttp's exceptions → httpx's, the most specific match winning (httpx-aiohttp's table, kept as it was:
# failures.diagnose and the web fetcher know its quirks).
_ERRORS: dict[type[Exception], type[httpx.HTTPError]] = {
    aiohttp.ServerTimeoutError: httpx.TimeoutException,
    aiohttp.SocketTimeoutError: httpx.ReadTimeout,
    aiohttp.ClientConnectionError: httpx.ConnectTimeout,
    aiohttp.ClientConnectorError: httpx.ConnectError,
    aiohttp.ClientPayloadError: httpx.ReadError,
    aiohttp.ClientProxyConnectionError: httpx.ProxyError,
    aiohttp.ClientHttpProxyError: httpx.ProxyError,
    aiohttp.NonHttpUrlClientError: httpx.UnsupportedProtocol,
    aiohttp.InvalidUrlClientError: httpx.UnsupportedProtocol,
}
_MAPPED = tuple(_ERRORS)
_IDENTITY = (None, "identity")
_CACHED_URLS = 256  # endpoints are few; the cache is dropped whole if ever it grows past this


def mapped_error(exc: Exception) -> httpx.HTTPError:
    """The httpx exception for one of aiohttp's (`_MAPPED`)."""
    found: type[httpx.HTTPError] = httpx.TransportError
    for source, target in _ERRORS.items():
        if isinstance(exc, source) and (found is httpx.TransportError or issubclass(target, found)):
            found = target
    return found(str(exc))


class AiohttpBody(httpx.AsyncByteStream):
    """A response body read from aiohttp; closing it releases (or, unread, closes) the connection."""

    __slots__ = ("_response", "identity")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        # No content encoding: the bytes on the wire are the body, and httpx's decoders can be skipped.
        self.identity = response.headers.get("Content-Encoding") in _IDENTITY

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while chunk := await content.readany():
                yield chunk
        except _MAPPED as exc:
            raise mapped_error(exc) from exc

    def reads(self) -> Callable[[], Awaitable[bytes]]:
        """aiohttp's own read of the next bytes (b"" at the end), unmapped: see `body_reads`."""
        return self._response.content.readany

    async def read(self) -> bytes:
        """The whole body as it came (still encoded when it has a content encoding)."""
        try:
            return await self._response.read()
        except _MAPPED as exc:
            raise mapped_error(exc) from exc

    async def aclose(self) -> None:
        response = self._response
        try:
            response.release()
            await response.wait_for_close()
        except _MAPPED as exc:
            raise mapped_error(exc) from exc


async def read_body(response: Reply) -> bytes:
    """A response's whole body, decoded; read straight from aiohttp when nothing needs decoding (as for every
    `AiohttpReply`, which `post` makes only for an unencoded answer)."""
    stream = response.stream
    if isinstance(stream, AiohttpBody) and stream.identity:
        return await stream.read()
    return await response.aread()


def body_blocks(response: Reply) -> AsyncIterator[bytes]:
    """A response's body, decoded, read by read; each read as aiohttp has it when nothing needs decoding."""
    stream = response.stream
    if isinstance(stream, AiohttpBody) and stream.identity:
        return aiter(stream)
    return response.aiter_bytes()


# What a read of `body_reads` may raise besides httpx's errors: aiohttp's, which `read_error` maps.
READ_ERRORS = _MAPPED


def body_reads(response: Reply) -> Callable[[], Awaitable[bytes]]:
    """A response's body, decoded, one read per call (b"" at its end), for a caller that loops over the reads itself.

    The reads come from aiohttp's own `readany` when nothing needs decoding: no generator of ours is resumed between
    the socket and the caller, a level that costs a relayed token ~1.2 k instructions. Its errors are aiohttp's
    (`READ_ERRORS`, for `read_error`) or httpx's.
    """
    stream = response.stream
    if isinstance(stream, AiohttpBody) and stream.identity:
        return stream.reads()
    return functools.partial(anext, response.aiter_bytes(), b"")


def read_error(exc: Exception) -> httpx.HTTPError:
    """The httpx error for one of `READ_ERRORS`, caused by it (as `AiohttpBody` raises it: `diagnose` reads the
    cause)."""
    error = mapped_error(exc)
    error.__cause__ = exc
    return error


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx requests sent through one aiohttp session (its pool bounded by `limits.max_connections`)."""

    def __init__(self, *, limits: httpx.Limits, verify: ssl.SSLContext | bool = True) -> None:
        self.limits = limits
        self.ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}
        self._timeouts: dict[tuple[float | None, float | None, float | None], aiohttp.ClientTimeout] = {}

    def open(self) -> aiohttp.ClientSession:
        """The session, made once, inside the event loop it will serve: at start-up, or else on first use."""
        return self._session or self._open()

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self.limits.max_connections or 0,
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
        )
        use_lazy_read_timeout(connector)  # one timer per connection for `sock_read`, not one per read
        use_vectored_writes()  # a request's head and body written as they are, not joined into a copy first
        self._session = aiohttp.ClientSession(
            connector=connector,
            # httpx decodes (from the response's own headers); no cookies: an API client has no use for them.
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        headers = request.headers
        try:
            data: Any = request.content or None
        except httpx.RequestNotRead:  # a streamed request body: aiohttp reads it and frames it itself
            data = request.stream
            headers = headers.copy()
            headers.pop("transfer-encoding", None)
        response = await self._request(
            request.method,
            request.url,
            wire_headers(headers),
            data,
            request.extensions.get("timeout"),
            server_hostname=request.extensions.get("sni_hostname"),
        )
        return _httpx_response(response)

    async def post(
        self,
        url: httpx.URL | URL,
        headers: CIMultiDict[str],
        content: bytes,
        limits: Mapping[str, float | None] | aiohttp.ClientTimeout,
    ) -> Reply:
        """POST `content` with exactly these headers (Host and Content-Length included); the answer unread.

        `url` and `limits` (httpx's timeout dict: connect, read, pool) may come as `aiohttp_url` and `client_timeout`
        made them, once per endpoint. An unencoded answer comes back as an `AiohttpReply`, one with a content encoding
        as an `httpx.Response` that decodes it.
        """
        reply = AiohttpReply(await self._request("POST", url, headers, content, limits))
        return reply if reply.stream.identity else _httpx_response(reply._response)

    async def _request(
        self,
        method: str,
        url: httpx.URL | URL,
        headers: CIMultiDict[str],
        data: Any,
        limits: Mapping[str, float | None] | aiohttp.ClientTimeout | None,
        *,
        server_hostname: str | None = None,
    ) -> aiohttp.ClientResponse:
        session = self._session or self._open()
        try:
            return await session.request(
                method,
                self.aiohttp_url(url),
                headers=headers,
                data=data,
                allow_redirects=False,
                compress=False,
                timeout=self.client_timeout(limits),
                server_hostname=server_hostname,
            )
        except _MAPPED as exc:
            raise mapped_error(exc) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def aiohttp_url(self, url: httpx.URL | URL) -> URL:
        """The URL as aiohttp takes it (parsed once per URL: an endpoint keeps it, and `str` of an `httpx.URL` costs
        as much as a small request's headers)."""
        if isinstance(url, URL):
            return url
        text = str(url)
        parsed = self._urls.get(text)
        if parsed is None:
            if len(self._urls) >= _CACHED_URLS:
                self._urls.clear()
            parsed = self._urls[text] = URL(text, encoded=True)  # httpx has encoded it already
        return parsed

    def client_timeout(
        self, limits: Mapping[str, float | None] | aiohttp.ClientTimeout | None
    ) -> aiohttp.ClientTimeout:
        """httpx's timeout dict as aiohttp's timeout (one per set of limits)."""
        if isinstance(limits, aiohttp.ClientTimeout):
            return limits
        limits = limits or {}
        key = (limits.get("connect"), limits.get("read"), limits.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            # httpx's pool timeout bounds waiting for a connection, as aiohttp's `connect` does.
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(sock_connect=key[0], sock_read=key[1], connect=key[2])
        return timeout


class AiohttpReply:
    """An unencoded answer read straight from aiohttp, with what the upstream client reads of an
    `httpx.Response`, which it stands in for: `status_code`, `reason_phrase`, `headers` (an `httpx.Headers`,
    built only when asked for), `stream` and `aclose()`."""

    __slots__ = ("_headers", "_response", "stream")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._headers: httpx.Headers | None = None
        self.stream = AiohttpBody(response)

    @property
    def status_code(self) -> int:
        return self._response.status

    @property
    def reason_phrase(self) -> str:
        reason = self._response.reason  # as `httpx.Response` reads it from the transport's extensions
        if not reason:
            return httpx.codes.get_reason_phrase(self.status_code)
        return reason.encode().decode("ascii", errors="ignore")

    @property
    def headers(self) -> httpx.Headers:
        if self._headers is None:
            self._headers = httpx.Headers(self._response.raw_headers)
        return self._headers

    async def aclose(self) -> None:
        await self.stream.aclose()


# What the upstream client gets back for a request: an `httpx.Response`, or an `AiohttpReply` in its place.
Reply = httpx.Response | AiohttpReply


def content_type(response: Reply) -> str:
    """The response's Content-Type ("" without one); from an `AiohttpReply` without building its `httpx.Headers`,
    which a stream would then hold for as long as it is read."""
    if isinstance(response, AiohttpReply):
        return response._response.headers.get("Content-Type", "")
    return response.headers.get("content-type", "")


def _httpx_response(response: aiohttp.ClientResponse) -> httpx.Response:
    extensions = {"http_version": b"HTTP/1.1"}  # a dict of its own: a caller may add to it
    if response.reason:
        extensions["reason_phrase"] = response.reason.encode()
    # No `request=`: httpx's client sets it on what a transport returns, and a caller of the transport
    # alone (the upstream client) has no use for it. Holding it would keep the request's body — for the
    # synthesizer, the whole prompt — for as long as its answer streams.
    return httpx.Response(
        status_code=response.status,
        headers=response.raw_headers,
        stream=AiohttpBody(response),
        extensions=extensions,
    )


def wire_headers(headers: httpx.Headers) -> CIMultiDict[str]:
    """The request's headers for aiohttp (as `post` takes them), every one kept (repeated names too), decoded as
    httpx encoded them."""
    raw = headers.raw
    try:
        return CIMultiDict([(key.decode("ascii"), value.decode("ascii")) for key, value in raw])
    except UnicodeDecodeError:
        encoding = headers.encoding
        return CIMultiDict([(key.decode(encoding), value.decode(encoding)) for key, value in raw])
