"""Safe fetch: every hop checked by the SSRF guard, connected to the checked address, capped, timed, extracted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Collection
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from openfusion.upstream.web.addresses import IPAddress
from openfusion.upstream.web.config import FetchConfig
from openfusion.upstream.web.content_coding import ACCEPT_ENCODING, BoundedDecoder
from openfusion.upstream.web.errors import FetchFailed, FetchRefused
from openfusion.upstream.web.exclusions import FetchExcluded, excludes, is_blocked
from openfusion.upstream.web.extract import (
    ContentKind,
    Extracted,
    content_kind,
    extract,
    is_unlabelled,
    parse_content_type,
    sniff_kind,
)
from openfusion.upstream.web.extract_pool import ExtractionPool
from openfusion.upstream.web.fetch_slots import FETCH_CONNECTIONS, FetchSlots, Turn
from openfusion.upstream.web.ssrf import AddressPolicy, Resolver, Target, resolve_target, system_resolver

logger = logging.getLogger(__name__)

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Every fetch says it comes from a gateway's fetcher, and every openfusion server refuses a request that says so
# (api/gateway_fetch.py): an allow-list that covers a gateway's own address cannot make it read its own pages.
FETCHER_VIA = "1.1 openfusion-fetch"
_ACCEPT = "text/html,application/xhtml+xml,text/plain;q=0.9,application/json;q=0.9,application/pdf;q=0.8,*/*;q=0.1"
# Cheap to read in a thread; HTML and PDF go to the extraction workers (their parsers can be made to run for minutes).
_INLINE_KINDS = frozenset({"text", "json"})
# A host with many addresses: try a few (all of them checked) before giving up.
_MAX_ADDRESSES = 3
_SNIFFED_TYPES: dict[ContentKind, str] = {
    "html": "text/html",
    "text": "text/plain",
    "json": "application/json",
    "pdf": "application/pdf",
}


@dataclass(frozen=True)
class FetchedPage:
    """A fetched page's readable text; `truncated` when bytes or characters were cut."""

    url: str
    final_url: str
    title: str | None
    text: str
    content_type: str
    truncated: bool


def build_fetch_client(
    *, verify: ssl.SSLContext | bool = True, max_connections: int = FETCH_CONNECTIONS
) -> httpx.AsyncClient:
    """An httpx client for untrusted fetches: no proxies from the environment, no cookie memory, no pooling."""
    # Cookies from one fetched site must not ride along to the next; allowed_domains=[] refuses them all.
    no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    # No keep-alive: a pooled connection is keyed by IP, so it could be reused for another TLS host name.
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=0)
    return httpx.AsyncClient(trust_env=False, follow_redirects=False, verify=verify, cookies=no_cookies, limits=limits)


class Fetcher:
    """Fetches public web pages for the model, refusing anything the SSRF guard does not allow."""

    def __init__(
        self,
        config: FetchConfig,
        *,
        http: httpx.AsyncClient,
        resolver: Resolver | None = None,
        extractor: ExtractionPool | None = None,
    ) -> None:
        """`extractor`: the app's pool of extraction workers; without one the fetcher starts its own."""
        if http.trust_env:
            # An environment proxy would resolve host names itself, undoing the address check.
            raise ValueError("the fetch client must be built with trust_env=False (see build_fetch_client)")
        self.config = config
        self.http = http
        self.resolver = resolver or system_resolver
        self.policy = AddressPolicy.from_config(config)
        self.extractor = extractor or ExtractionPool.from_config(config)

    async def fetch(self, url: str, *, excluded: Collection[str] = (), slots: FetchSlots | None = None) -> FetchedPage:
        """Fetch `url` (following up to `max_redirects` checked redirects); raise FetchRefused or FetchFailed.

        `excluded`: domains (see exclusions.excludes) no hop may go to; such a hop is refused before its request.
        `slots`: the turns its request and its client key take at the shared client (see WebResearch.fetch_slots);
        the wait for one counts against `timeout_s`, so neither a request nor a key holds more than its share.
        """
        extracting: list[ContentKind] = []  # set while the text is extracted, for the timeout's message
        turn = Turn()
        try:
            async with asyncio.timeout(self.config.timeout_s), contextlib.AsyncExitStack() as held:
                if slots is not None:
                    await turn.take(slots, held)
                return await self._fetch(url, extracting, excluded)
        except TimeoutError:
            raise self._timed_out(turn, extracting, slots) from None
        except FetchRefused as exc:
            logger.info("web_fetch refused: %s", exc.message)
            raise

    def _timed_out(self, turn: Turn, extracting: list[ContentKind], slots: FetchSlots | None) -> FetchFailed:
        """What the model is told of a fetch that ran out of `timeout_s`: whether it had to wait for a turn."""
        after = f"the fetch timed out after {self.config.timeout_s:g} s"
        if turn.waited_for == "request":
            whose = f"this request had {self.config.max_fetches_per_request} other fetches under way"
        elif turn.waited_for == "key":
            count = self.config.max_fetches_per_key
            whose = f"requests made with this client key had {count} fetch{'es' if count > 1 else ''} under way"
        elif turn.waited_for == "connections" and slots is not None:
            whose = f"this server's fetch connections ({slots.connections.size}) were all in use"
        elif extracting:
            return FetchFailed(f"{after}: text extraction was cut off.")
        else:
            return FetchFailed(f"{after}.")
        if turn.waiting:
            return FetchFailed(f"{after} waiting for a turn: {whose}.")
        return FetchFailed(f"{after}, {turn.waited_s:.1f} s of it waiting for a turn ({whose}).")

    async def _fetch(self, url: str, extracting: list[ContentKind], excluded: Collection[str]) -> FetchedPage:
        current = url
        first: Target | None = None
        for hop in range(self.config.max_redirects + 1):
            if is_blocked(current, excluded):  # by what the URL says of itself: an excluded name is not looked up
                raise FetchExcluded
            try:
                target = await resolve_target(current, policy=self.policy, resolver=self.resolver)
            except FetchRefused as exc:
                if hop == 0:
                    raise
                inner = exc.message.removeprefix("refused: ")
                raise FetchRefused(f"refused: a redirect went off limits: {inner}") from None
            if excludes(target, excluded):  # by the addresses it resolved to
                raise FetchExcluded
            first = first or target
            response = await self._open(target)
            try:
                location = response.headers.get("location") if response.status_code in _REDIRECTS else None
                if location is None:
                    return await self._page(first, target, response, extracting)
            finally:
                # A redirect's body is never read.
                await response.aclose()
            try:
                current = str(target.url.join(location.strip()))
            except httpx.InvalidURL:
                raise FetchFailed(f"{target.host} redirected to an invalid URL.") from None
        raise FetchFailed(f"too many redirects (more than {self.config.max_redirects}).")

    async def _open(self, target: Target) -> httpx.Response:
        """Send the request to one of the checked addresses; never to anything a resolver says later."""
        last_error: httpx.HTTPError | None = None
        for address in target.addresses[:_MAX_ADDRESSES]:
            request = self._request(target, address)
            try:
                return await self.http.send(request, stream=True, follow_redirects=False, auth=None)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # The aiohttp transport reports a refused connection as ConnectTimeout: both mean "next address".
                last_error = exc
            except httpx.TimeoutException:
                raise FetchFailed(f"{target.host} did not answer in time.") from None
            except httpx.HTTPError as exc:
                raise FetchFailed(f"the request to {target.host} failed ({type(exc).__name__}).") from None
        if last_error is not None and _is_certificate_error(last_error):
            raise FetchFailed(f"the TLS certificate of {target.host} could not be verified.")
        raise FetchFailed(f"could not connect to {target.host}.")

    def _request(self, target: Target, address: IPAddress) -> httpx.Request:
        # The URL names the checked IP, so no transport resolves the name again (no DNS rebinding);
        # Host and TLS SNI carry the name, and certificates are verified against that name.
        url = target.url.copy_with(host=str(address))
        headers = {
            "Host": target.url.netloc.decode("ascii"),
            "User-Agent": self.config.user_agent,
            "Accept": _ACCEPT,
            "Accept-Encoding": ACCEPT_ENCODING,
            "Connection": "close",
            "Via": FETCHER_VIA,
        }
        extensions: dict[str, object] = {"timeout": httpx.Timeout(self.config.timeout_s).as_dict()}
        if target.url.scheme == "https" and not target.ip_literal:
            extensions["sni_hostname"] = target.host
        # Built directly (not client.build_request) so no client default header or cookie is sent.
        return httpx.Request("GET", url, headers=headers, extensions=extensions)

    async def _page(
        self, first: Target, target: Target, response: httpx.Response, extracting: list[ContentKind]
    ) -> FetchedPage:
        status = response.status_code
        if not 200 <= status < 300:
            raise FetchFailed(f"{target.host} answered HTTP {status}.")
        media_type, charset = parse_content_type(response.headers.get("content-type"))
        kind = content_kind(media_type)
        if kind is None and not is_unlabelled(media_type):
            raise FetchFailed(f"unsupported content type {media_type}: web_fetch reads HTML, text, JSON and PDF.")
        if kind == "pdf" and _content_length(response) > self.config.max_bytes:
            raise FetchFailed(f"the PDF is larger than the {self.config.max_bytes} bytes web_fetch may download.")
        body, cut = await self._read(target, response)
        if kind is None:
            kind = sniff_kind(body)
            if kind is None:
                raise FetchFailed("the response is binary data: web_fetch reads HTML, text, JSON and PDF.")
            media_type = _SNIFFED_TYPES[kind]
        if kind == "pdf" and cut:
            raise FetchFailed(f"the PDF is larger than the {self.config.max_bytes} bytes web_fetch may download.")
        max_chars = self.config.max_chars
        extracting.append(kind)
        extracted = await self._extract(kind, body, charset=charset, url=str(target.url))
        text, truncated = truncate(
            extracted.text, max_chars=max_chars, bytes_cut=cut, max_bytes=self.config.max_bytes, cut=extracted.cut
        )
        return FetchedPage(
            url=str(first.url),
            final_url=str(target.url),
            title=extracted.title,
            text=text,
            content_type=media_type,
            truncated=truncated,
        )

    async def _extract(self, kind: ContentKind, body: bytes, *, charset: str | None, url: str) -> Extracted:
        max_chars = self.config.max_chars
        if kind in _INLINE_KINDS:
            return await asyncio.to_thread(extract, kind, body, charset=charset, url=url, max_chars=max_chars)
        return await self.extractor.extract(kind, body, charset=charset, url=url, max_chars=max_chars)

    async def _read(self, target: Target, response: httpx.Response) -> tuple[bytes, bool]:
        """The body up to max_bytes (decoded), and whether more was left unread."""
        limit = self.config.max_bytes
        # Raw bytes, decoded here: httpx would inflate each chunk in full, however far past the limit.
        decoder = BoundedDecoder(response.headers.get("content-encoding"))
        chunks: list[bytes] = []
        size = 0
        try:
            async for raw in response.aiter_raw():
                chunk, more = decoder.decode(raw, limit - size)
                chunks.append(chunk)
                size += len(chunk)
                if more:
                    return b"".join(chunks), True
        except httpx.TimeoutException:
            raise FetchFailed(f"{target.host} stopped sending in time.") from None
        except httpx.HTTPError as exc:
            raise FetchFailed(f"reading from {target.host} failed ({type(exc).__name__}).") from None
        return b"".join(chunks), False


def truncate(
    text: str, *, max_chars: int, bytes_cut: bool = False, max_bytes: int = 0, cut: str | None = None
) -> tuple[str, bool]:
    """Cut `text` to at most `max_chars` characters (marker included); say so when anything was left out."""
    if len(text) > max_chars:
        cut = f"the text continues beyond {max_chars} characters"
    elif bytes_cut:
        cut = f"only the first {max_bytes} bytes were downloaded"
    if cut is None:
        return text, False
    marker = f"\n\n[… truncated: {cut}]"
    return text[: max(0, max_chars - len(marker))].rstrip() + marker, True


def _content_length(response: httpx.Response) -> int:
    try:
        return int(response.headers.get("content-length", "0"))
    except ValueError:
        return 0


def _is_certificate_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):  # walk the cause chain a little way: transports wrap the ssl error differently
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError) or "Certificate" in type(seen).__name__:
            return True
        seen = seen.__cause__ or seen.__context__
    return False
