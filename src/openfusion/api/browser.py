"""Browser safety at the edge: JSON-only bodies, no cross-site API calls, no caching, no framing.

A web page on another site can make a visitor's browser send a "simple" request here — a form post,
or `fetch` with a text/plain or typeless body — without any CORS preflight, and the browser may add
credentials it holds for this server. Such a request could start paid runs. So a request body must
be `application/json` (no simple request can send that type), and a request the browser marks as
coming from another site (`Sec-Fetch-Site`, else an `Origin` other than this server) is refused on
every route but the `/activity` pages, unless `[cors]` allows its origin. Every response says
`Cache-Control: no-store` (answers and activity are private) and may not be framed by another page.
The guard also refuses, first of all, a request made by a gateway's own `web_fetch` (see gateway_fetch).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openfusion.access.config import CorsConfig
from openfusion.api.gateway_fetch import gateway_fetch
from openfusion.api.handlers import error_response, route_path
from openfusion.errors import CrossSiteRequest, OpenFusionError, UnsupportedMediaType

_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_OTHER_SITE = frozenset({"cross-site", "same-site"})
_SAFETY_HEADERS = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff")]


def is_activity_page(path: str) -> bool:
    """Whether a route path is one of the HTML activity pages (the only place for Basic auth)."""
    return path == "/activity" or path.startswith("/activity/")


def private_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A response's headers, marked private: never cached (`no-store` replaces any Cache-Control), never framed."""
    private = [(k, v) for k, v in headers if k.lower() != b"cache-control"]
    present = {k.lower() for k, _ in private}
    private += [(k, v) for k, v in _SAFETY_HEADERS if k not in present]
    private.append((b"cache-control", b"no-store"))
    return private


class BrowserGuard:
    """Refuses non-JSON or compressed bodies (415), cross-site API requests and a gateway's fetches (403); marks every
    response private."""

    def __init__(self, app: ASGIApp, *, cors: CorsConfig) -> None:
        self.app = app
        self.any_origin = "*" in cors.allow_origins
        self.origins = frozenset(origin.rstrip("/").lower() for origin in cors.allow_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def private(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": private_headers(message.get("headers", ()))}
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            await error_response(refusal, scope)(scope, receive, private)
            return
        await self.app(scope, receive, private)

    def refusal(self, scope: Scope) -> OpenFusionError | None:
        """Why an HTTP request is refused (a gateway's fetch, a cross-site call, a body that is not JSON), or None."""
        headers = _read_headers(scope)
        fetched = gateway_fetch(headers.get(b"via", ""))
        if fetched is not None:
            return fetched
        if not is_activity_page(route_path(scope)) and self._from_another_site(headers):
            return CrossSiteRequest(
                "Cross-site browser requests are refused: call this API from a server, or allow the page's "
                "origin in [cors] allow_origins."
            )
        if scope["method"] in _WITH_BODY:
            media_type = headers.get(b"content-type", "").split(";", 1)[0].strip().lower()
            if media_type != "application/json":
                shown = f"got {media_type!r}" if media_type else "none was sent"
                return UnsupportedMediaType(f"Content-Type must be application/json ({shown}).")
            encoding = headers.get(b"content-encoding")
            if encoding is not None and encoding.strip().lower() not in ("", "identity"):
                # Read as it came, a compressed body would be refused as JSON that does not parse.
                return UnsupportedMediaType(
                    f"Content-Encoding {encoding.strip()[:40]!r} is not supported: send the body uncompressed."
                )
        return None

    def _from_another_site(self, headers: dict[bytes, str]) -> bool:
        origin = headers.get(b"origin")
        if origin is not None and (self.any_origin or origin.rstrip("/").lower() in self.origins):
            return False  # the operator allows this origin's pages to call the API
        site = headers.get(b"sec-fetch-site")
        if site is not None:  # every current browser sends it: trust it over Host, which proxies rewrite
            return site in _OTHER_SITE
        if origin is None:
            return False  # not a browser (SDKs, curl), or a same-origin GET
        return urlsplit(origin).netloc.lower() != headers.get(b"host", "").lower()


_READ = frozenset({b"origin", b"sec-fetch-site", b"host", b"content-type", b"content-encoding", b"via"})


def _read_headers(scope: Scope) -> dict[bytes, str]:
    """The headers the guard reads, in one pass (the first of each, as `Headers.get` gives; ASGI names are
    lowercase; `Via` whole: its lines joined, as one line would list them). Most requests lack `Origin` and
    `Sec-Fetch-Site`: a `Headers` lookup of each raised and caught a KeyError."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in _READ and name not in found:
            found[name] = value.decode("latin-1")
        elif name == b"via":
            found[name] = found[name] + ", " + value.decode("latin-1")
    return found
