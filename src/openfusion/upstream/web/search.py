"""Search backends behind one protocol: SearXNG, Brave, Tavily and Exa, chosen from the config by name."""

from __future__ import annotations

import asyncio
import html
import logging
import re
from typing import Any, ClassVar, Protocol

import httpx
import orjson
from pydantic import BaseModel, SecretStr

from openfusion.masking import SecretMasker
from openfusion.upstream.trace import add_charge
from openfusion.upstream.web.config import SearchConfig
from openfusion.upstream.web.errors import SearchError

logger = logging.getLogger(__name__)

_TAGS = re.compile(r"<[^>]{0,200}>")
_MAX_TITLE = 300
_MAX_SNIPPET = 600


class SearchResult(BaseModel):
    """One search hit as the model sees it."""

    title: str
    url: str
    snippet: str


class SearchBackend(Protocol):
    """Anything that answers a query with search results (raises SearchError when it cannot)."""

    @property
    def name(self) -> str:
        """The backend's name, for messages."""
        ...

    @property
    def max_price(self) -> float:
        """The most one search costs, in USD (0: free)."""
        ...

    async def search(self, query: str, *, max_results: int) -> list[SearchResult]:
        """Up to `max_results` results for `query`; a search the backend may bill is charged to the request."""
        ...


class HttpSearchBackend:
    """The shared part of the HTTP backends: send, map failures to SearchError, parse JSON, clean results."""

    name: ClassVar[str]
    default_base_url: ClassVar[str | None] = None
    # The most results the API returns for one request.
    max_results: ClassVar[int] = 25
    needs_key: ClassVar[bool] = True
    # The API's public list price in USD of one request (the plain search openfusion asks for) returning up to
    # `included_results` results, and of each result beyond them. An operator's `price_usd` replaces both.
    list_price: ClassVar[float] = 0.0
    included_results: ClassVar[int] = 25
    extra_result_price: ClassVar[float] = 0.0

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        base_url: str,
        api_key: SecretStr | None,
        timeout_s: float = 15.0,
        masker: SecretMasker | None = None,
        price_usd: float | None = None,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.price_usd = price_usd
        # Results reach models and, as sources, clients: an API echoing a key must not pass it on.
        self.masker = masker if masker is not None else SecretMasker([self.key()])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def price(self, count: int) -> float:
        """What one request for `count` results costs, in USD."""
        if self.price_usd is not None:
            return self.price_usd
        return self.list_price + self.extra_result_price * max(0, count - self.included_results)

    @property
    def max_price(self) -> float:
        """The most one search costs, in USD: a request for as many results as the API returns."""
        return self.price(self.max_results)

    async def search(self, query: str, *, max_results: int) -> list[SearchResult]:
        """Up to `max_results` results for `query` (clipped to what the API allows)."""
        count = max(1, min(max_results, self.max_results))
        data = await self._send(self.build_request(query, count), price=self.price(count))
        results = [result for result in self.parse(data) if result is not None]
        return results[:count]

    def build_request(self, query: str, count: int) -> httpx.Request:
        """The API request for one query."""
        raise NotImplementedError

    def parse(self, data: Any) -> list[SearchResult | None]:
        """The API's JSON answer as results (None for entries without a usable URL)."""
        raise NotImplementedError

    def key(self) -> str:
        """The API key's value, for a request header only."""
        return self.api_key.get_secret_value() if self.api_key is not None else ""

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Request:
        timeout = httpx.Timeout(self.timeout_s)
        return self.http.build_request(method, self.base_url + path, timeout=timeout, **kwargs)

    async def _send(self, request: httpx.Request, *, price: float) -> Any:
        """The API's JSON answer. The request is charged (`price`) unless it never reached the API or the API refused
        it with an HTTP error: one that timed out, broke off or was cancelled may have been billed, so it counts."""
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self.http.send(request)
        except asyncio.CancelledError:  # the client left mid-search: the API may run it all the same
            add_charge(price)
            raise
        except (TimeoutError, httpx.TimeoutException) as exc:
            if not isinstance(exc, httpx.ConnectTimeout):  # (never connected: never sent)
                add_charge(price)
            raise SearchError(f"the {self.name} search backend timed out.") from None
        except httpx.HTTPError as exc:
            if not isinstance(exc, httpx.ConnectError):
                add_charge(price)
            logger.info("search backend %s unreachable: %s", self.name, type(exc).__name__)
            raise SearchError(f"the {self.name} search backend could not be reached.") from None
        if response.status_code >= 400:
            logger.info("search backend %s answered HTTP %s", self.name, response.status_code)
            raise SearchError(self.status_message(response.status_code))
        add_charge(price)
        try:
            return orjson.loads(self.masker.bytes(response.content))
        except orjson.JSONDecodeError:
            raise SearchError(f"the {self.name} search backend returned a response that is not JSON.") from None

    def status_message(self, status: int) -> str:
        """What an HTTP error status from the API means (never echoing the body: it may quote the key)."""
        if status in (401, 403):
            return f"the {self.name} search backend refused the request (HTTP {status}: check its API key)."
        if status == 429:
            return f"the {self.name} search backend is rate limiting requests (HTTP 429); try again later."
        return f"the {self.name} search backend answered HTTP {status}."


class SearxngBackend(HttpSearchBackend):
    """A SearXNG instance's JSON API: GET /search?q=…&format=json (the json format must be enabled)."""

    name = "searxng"
    needs_key = False

    def build_request(self, query: str, count: int) -> httpx.Request:
        return self._request("GET", "/search", params={"q": query, "format": "json", "pageno": 1})

    def parse(self, data: Any) -> list[SearchResult | None]:
        return [result(item.get("title"), item.get("url"), item.get("content")) for item in _items(data, "results")]

    def status_message(self, status: int) -> str:
        if status == 403:
            return "the searxng search backend refused the JSON format (enable `json` under search.formats)."
        return super().status_message(status)


class BraveBackend(HttpSearchBackend):
    """Brave Search API: GET /res/v1/web/search with the X-Subscription-Token header; results in web.results."""

    name = "brave"
    default_base_url = "https://api.search.brave.com"
    max_results = 20
    list_price = 0.005  # the Search plan: $5 per 1,000 requests

    def build_request(self, query: str, count: int) -> httpx.Request:
        params = {"q": query, "count": count, "text_decorations": "false"}
        headers = {"Accept": "application/json", "X-Subscription-Token": self.key()}
        return self._request("GET", "/res/v1/web/search", params=params, headers=headers)

    def parse(self, data: Any) -> list[SearchResult | None]:
        if not isinstance(data, dict):
            raise SearchError("the brave search backend returned an unexpected response.")
        # Brave leaves `web` out entirely when nothing matched.
        web = data.get("web") or {"results": []}
        return [result(item.get("title"), item.get("url"), item.get("description")) for item in _items(web, "results")]


class TavilyBackend(HttpSearchBackend):
    """Tavily: POST /search with a Bearer key; results carry title, url and content."""

    name = "tavily"
    default_base_url = "https://api.tavily.com"
    max_results = 20
    list_price = 0.008  # a basic search is 1 credit, $0.008 pay-as-you-go (monthly plans are cheaper)

    def build_request(self, query: str, count: int) -> httpx.Request:
        body = {"query": query, "max_results": count, "search_depth": "basic", "include_answer": False}
        headers = {"Authorization": f"Bearer {self.key()}", "Content-Type": "application/json"}
        return self._request("POST", "/search", content=orjson.dumps(body), headers=headers)

    def parse(self, data: Any) -> list[SearchResult | None]:
        return [result(item.get("title"), item.get("url"), item.get("content")) for item in _items(data, "results")]


class ExaBackend(HttpSearchBackend):
    """Exa: POST /search with the x-api-key header, asking for highlights as snippets."""

    name = "exa"
    default_base_url = "https://api.exa.ai"
    max_results = 25
    # $7 per 1,000 searches with contents for up to 10 results (highlights included), $1 per 1,000 results beyond.
    list_price = 0.007
    included_results = 10
    extra_result_price = 0.001

    def build_request(self, query: str, count: int) -> httpx.Request:
        body = {
            "query": query,
            "type": "auto",
            "numResults": count,
            "contents": {"highlights": {"maxCharacters": _MAX_SNIPPET}},
        }
        headers = {"x-api-key": self.key(), "Content-Type": "application/json"}
        return self._request("POST", "/search", content=orjson.dumps(body), headers=headers)

    def parse(self, data: Any) -> list[SearchResult | None]:
        parsed: list[SearchResult | None] = []
        for item in _items(data, "results"):
            highlights = item.get("highlights")
            if isinstance(highlights, list) and highlights:
                snippet = " … ".join(str(part) for part in highlights)
            else:
                snippet = item.get("summary") or item.get("text") or ""
            parsed.append(result(item.get("title"), item.get("url"), snippet))
        return parsed


# The backends by their config name: adding one is adding a class and a line here.
BACKENDS: dict[str, type[HttpSearchBackend]] = {
    backend.name: backend for backend in (SearxngBackend, BraveBackend, TavilyBackend, ExaBackend)
}


def build_search_backend(
    config: SearchConfig, *, http: httpx.AsyncClient, api_key: SecretStr | None, masker: SecretMasker | None = None
) -> HttpSearchBackend:
    """The backend a `[research.search]` table names; ValueError when its API key is missing."""
    backend = BACKENDS[config.backend]
    base_url = config.base_url or backend.default_base_url
    if base_url is None:
        raise ValueError(f"the {config.backend} search backend needs base_url")
    if backend.needs_key and (api_key is None or not api_key.get_secret_value()):
        raise ValueError(f"the {config.backend} search backend needs an API key (set {config.key_env})")
    return backend(http=http, base_url=base_url, api_key=api_key, timeout_s=config.timeout_s, masker=masker,
                   price_usd=config.price_usd)  # fmt: skip


def result(title: Any, url: Any, snippet: Any) -> SearchResult | None:
    """A cleaned result, or None when the URL is not an http(s) URL."""
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        return None
    return SearchResult(
        title=_clean(title, _MAX_TITLE) or url,
        url=url.strip(),
        snippet=_clean(snippet, _MAX_SNIPPET),
    )


def _clean(value: Any, limit: int) -> str:
    if not isinstance(value, str):
        return ""
    text = " ".join(html.unescape(_TAGS.sub("", value)).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _items(container: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(container, dict):
        raise SearchError("the search backend returned an unexpected response.")
    items = container.get(key) or []
    if not isinstance(items, list):
        raise SearchError("the search backend returned an unexpected response.")
    return [item for item in items if isinstance(item, dict)]
