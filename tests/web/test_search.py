"""Search backends against respx stand-ins that answer in each API's documented shape."""

from __future__ import annotations

import asyncio
import contextlib
import typing
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest
import respx
from pydantic import SecretStr

from openfusion.upstream.web.config import SearchBackendName, SearchConfig
from openfusion.upstream.web.errors import SearchError
from openfusion.upstream.web.search import (
    BACKENDS,
    BraveBackend,
    ExaBackend,
    SearxngBackend,
    TavilyBackend,
    build_search_backend,
)

KEY = SecretStr("sk-test-search-key-123")
SEARXNG_URL = "http://searx.internal:8888"

SEARXNG_BODY = {
    "query": "nuclear safety per TWh",
    "number_of_results": 0,
    "results": [
        {
            "url": "https://ourworldindata.org/safest-sources-of-energy",
            "title": "What are the safest and cleanest sources of energy?",
            "content": "Nuclear and renewables are far safer than fossil fuels, per unit of energy.",
            "engine": "duckduckgo",
            "parsed_url": ["https", "ourworldindata.org", "/safest-sources-of-energy", "", "", ""],
            "template": "default.html",
            "engines": ["duckduckgo", "brave"],
            "positions": [1, 2],
            "score": 4.0,
            "category": "general",
        },
        {"url": "magnet:?xt=urn:btih:abc", "title": "not a web page", "content": "", "engine": "piratebay"},
        {
            "url": "https://en.wikipedia.org/wiki/Nuclear_safety_and_security",
            "title": "Nuclear safety and security - Wikipedia",
            "content": "Nuclear safety is defined by the IAEA as &quot;the achievement of proper operating "
            "conditions&quot;",
            "engine": "wikipedia",
        },
    ],
    "answers": [],
    "corrections": [],
    "infoboxes": [],
    "suggestions": ["nuclear safety record"],
    "unresponsive_engines": [],
}

BRAVE_BODY = {
    "type": "search",
    "query": {"original": "nuclear safety per TWh", "show_strict_warning": False, "is_navigational": False},
    "mixed": {"type": "mixed", "main": [{"type": "web", "index": 0, "all": False}]},
    "web": {
        "type": "search",
        "results": [
            {
                "title": "Safest sources of <strong>energy</strong>",
                "url": "https://ourworldindata.org/safest-sources-of-energy",
                "is_source_local": False,
                "is_source_both": False,
                "description": "Deaths per <strong>TWh</strong> of electricity: nuclear 0.03, wind 0.04.",
                "page_age": "2024-02-01T00:00:00",
                "profile": {"name": "Our World in Data", "url": "https://ourworldindata.org"},
                "language": "en",
                "family_friendly": True,
                "type": "search_result",
                "subtype": "generic",
                "meta_url": {"scheme": "https", "netloc": "ourworldindata.org", "hostname": "ourworldindata.org"},
                "age": "February 1, 2024",
                "extra_snippets": ["Coal is the dirtiest."],
            }
        ],
        "family_friendly": True,
    },
}

TAVILY_BODY = {
    "query": "nuclear safety per TWh",
    "follow_up_questions": None,
    "answer": None,
    "images": [],
    "results": [
        {
            "title": "Nuclear Power Is the Safest Energy Source",
            "url": "https://example-energy.org/nuclear-safest",
            "content": "Per terawatt-hour, nuclear causes fewer deaths than any fossil source.",
            "score": 0.98,
            "raw_content": None,
        }
    ],
    "response_time": 1.42,
    "request_id": "123e4567-e89b-12d3-a456-426614174111",
}

EXA_BODY = {
    "requestId": "b5947044c4b78efa9552a7c89b306d95",
    "resolvedSearchType": "neural",
    "searchType": "auto",
    "results": [
        {
            "id": "https://www.nature.com/articles/nuclear-safety",
            "title": "Comparing the safety of energy sources",
            "url": "https://www.nature.com/articles/nuclear-safety",
            "publishedDate": "2023-11-16T01:36:32.547Z",
            "author": "A. Researcher",
            "highlights": ["Nuclear has the lowest death rate.", "Wind and solar are close behind."],
            "highlightScores": [0.46, 0.31],
        },
        {"id": "x", "title": None, "url": "https://example.org/untitled", "text": "Full text fallback."},
    ],
    "costDollars": {"total": 0.005},
}


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as mock:
        yield mock


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


def backend(http: httpx.AsyncClient, name: str, **config: object) -> typing.Any:
    settings = {"backend": name, **config}
    if name == "searxng":
        settings.setdefault("base_url", SEARXNG_URL)
    return build_search_backend(SearchConfig(**settings), http=http, api_key=None if name == "searxng" else KEY)  # type: ignore[arg-type]


async def test_searxng_maps_the_json_api(router: respx.MockRouter, http: httpx.AsyncClient) -> None:
    route = router.get(f"{SEARXNG_URL}/search").respond(json=SEARXNG_BODY)
    results = await backend(http, "searxng").search("nuclear safety per TWh", max_results=5)
    request = route.calls.last.request
    assert dict(request.url.params) == {"q": "nuclear safety per TWh", "format": "json", "pageno": "1"}
    assert [result.url for result in results] == [
        "https://ourworldindata.org/safest-sources-of-energy",
        "https://en.wikipedia.org/wiki/Nuclear_safety_and_security",
    ]
    assert results[0].title == "What are the safest and cleanest sources of energy?"
    assert results[1].snippet.startswith('Nuclear safety is defined by the IAEA as "the achievement')


async def test_searxng_403_explains_the_json_format(router: respx.MockRouter, http: httpx.AsyncClient) -> None:
    router.get(f"{SEARXNG_URL}/search").respond(403, text="Forbidden")
    with pytest.raises(SearchError, match=r"enable `json` under search\.formats"):
        await backend(http, "searxng").search("q", max_results=5)


async def test_brave_maps_web_results(router: respx.MockRouter, http: httpx.AsyncClient) -> None:
    route = router.get("https://api.search.brave.com/res/v1/web/search").respond(json=BRAVE_BODY)
    [result] = await backend(http, "brave").search("nuclear safety per TWh", max_results=50)
    request = route.calls.last.request
    assert request.headers["x-subscription-token"] == KEY.get_secret_value()
    assert request.headers["accept"] == "application/json"
    assert dict(request.url.params) == {"q": "nuclear safety per TWh", "count": "20", "text_decorations": "false"}
    assert result.title == "Safest sources of energy"
    assert result.snippet == "Deaths per TWh of electricity: nuclear 0.03, wind 0.04."


async def test_a_search_api_echoing_its_key_in_results_is_masked(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    key = KEY.get_secret_value()
    echo = {
        "web": {
            "results": [
                {"title": f"Debug: token {key}", "url": f"https://example.org/?token={key}", "description": key[:-2]}
            ]
        }
    }
    router.get("https://api.search.brave.com/res/v1/web/search").respond(json=echo)
    [result] = await backend(http, "brave").search("anything", max_results=3)
    assert (result.title, result.url, result.snippet) == ("Debug: token ***", "https://example.org/?token=***", "***")


async def test_brave_without_web_results_is_an_empty_list(router: respx.MockRouter, http: httpx.AsyncClient) -> None:
    router.get("https://api.search.brave.com/res/v1/web/search").respond(json={"type": "search", "query": {}})
    assert await backend(http, "brave").search("zzqx", max_results=5) == []


async def test_tavily_posts_the_query_with_a_bearer_key(router: respx.MockRouter, http: httpx.AsyncClient) -> None:
    route = router.post("https://api.tavily.com/search").respond(json=TAVILY_BODY)
    [result] = await backend(http, "tavily").search("nuclear safety per TWh", max_results=3)
    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {KEY.get_secret_value()}"
    body = orjson.loads(request.content)
    assert body == {
        "query": "nuclear safety per TWh",
        "max_results": 3,
        "search_depth": "basic",
        "include_answer": False,
    }
    assert (result.title, result.url) == (
        "Nuclear Power Is the Safest Energy Source",
        "https://example-energy.org/nuclear-safest",
    )
    assert result.snippet.startswith("Per terawatt-hour")


async def test_exa_asks_for_highlights_and_joins_them(router: respx.MockRouter, http: httpx.AsyncClient) -> None:
    route = router.post("https://api.exa.ai/search").respond(json=EXA_BODY)
    first, second = await backend(http, "exa").search("nuclear safety per TWh", max_results=2)
    request = route.calls.last.request
    assert request.headers["x-api-key"] == KEY.get_secret_value()
    body = orjson.loads(request.content)
    assert body["query"] == "nuclear safety per TWh" and body["numResults"] == 2
    assert body["contents"] == {"highlights": {"maxCharacters": 600}}
    assert first.snippet == "Nuclear has the lowest death rate. … Wind and solar are close behind."
    assert (second.title, second.snippet) == ("https://example.org/untitled", "Full text fallback.")


async def test_a_base_url_override_is_used(router: respx.MockRouter, http: httpx.AsyncClient) -> None:
    route = router.post("http://tavily-proxy.internal/v1/search").respond(json=TAVILY_BODY)
    await backend(http, "tavily", base_url="http://tavily-proxy.internal/v1/").search("q", max_results=1)
    assert route.called


async def test_results_are_cut_to_max_results(router: respx.MockRouter, http: httpx.AsyncClient) -> None:
    router.get(f"{SEARXNG_URL}/search").respond(json=SEARXNG_BODY)
    results = await backend(http, "searxng").search("q", max_results=1)
    assert len(results) == 1


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(401, text=f"invalid key {KEY.get_secret_value()}"), "refused the request (HTTP 401"),
        (httpx.Response(429, text="slow down"), "rate limiting"),
        (httpx.Response(500, text="boom"), "answered HTTP 500"),
        (httpx.Response(200, text="<html>not json</html>"), "not JSON"),
        (httpx.Response(200, json={"results": "nope"}), "unexpected response"),
        (httpx.Response(200, json=["a list"]), "unexpected response"),
        (httpx.ConnectError("refused"), "could not be reached"),
        (httpx.ReadTimeout("slow"), "timed out"),
    ],
)
async def test_failures_become_search_errors_without_the_key(
    router: respx.MockRouter, http: httpx.AsyncClient, response: httpx.Response | Exception, message: str
) -> None:
    router.post("https://api.tavily.com/search").mock(side_effect=[response])
    with pytest.raises(SearchError) as failed:
        await backend(http, "tavily").search("q", max_results=5)
    assert message in failed.value.message
    assert KEY.get_secret_value() not in failed.value.message
    assert KEY.get_secret_value() not in repr(failed.value)


def test_every_configurable_backend_is_registered() -> None:
    assert set(BACKENDS) == set(typing.get_args(SearchBackendName))
    expected = {"searxng": SearxngBackend, "brave": BraveBackend, "tavily": TavilyBackend, "exa": ExaBackend}
    assert expected == BACKENDS


def test_a_keyed_backend_without_a_key_is_refused_naming_the_variable(http: httpx.AsyncClient) -> None:
    with pytest.raises(ValueError, match="set BRAVE_API_KEY"):
        build_search_backend(SearchConfig(backend="brave"), http=http, api_key=None)
    with pytest.raises(ValueError, match="set MY_EXA"):
        build_search_backend(SearchConfig(backend="exa", api_key_env="MY_EXA"), http=http, api_key=SecretStr(""))


def test_the_key_never_shows_in_a_backend_repr(http: httpx.AsyncClient) -> None:
    built = backend(http, "brave")
    assert KEY.get_secret_value() not in repr(built)
    assert KEY.get_secret_value() not in repr(vars(built))


def test_each_paid_backend_has_its_public_list_price_unless_one_is_configured(http: httpx.AsyncClient) -> None:
    """Per search request, in USD: Brave $5 per 1,000, Tavily a basic search's credit at $0.008, Exa $7 per 1,000 for
    up to 10 results and $1 per 1,000 results beyond; a SearXNG instance is the operator's own."""
    assert [backend(http, name).max_price for name in ("searxng", "brave", "tavily")] == [0.0, 0.005, 0.008]
    exa = backend(http, "exa")
    assert (exa.price(5), exa.price(10)) == (0.007, 0.007)
    assert exa.max_price == pytest.approx(0.007 + 15 * 0.001)  # 25 results asked for
    assert backend(http, "exa", price_usd=0.004).max_price == 0.004


@pytest.mark.parametrize(
    ("outcome", "charged"),
    [
        (httpx.Response(200, json={"web": {"results": []}}), True),
        (httpx.Response(200, text="not json"), True),  # answered: billed all the same
        (httpx.ReadTimeout("slow"), True),  # it may have run the search
        (httpx.RemoteProtocolError("cut"), True),
        (httpx.Response(429), False),  # refused with an HTTP error: not billed
        (httpx.ConnectError("refused"), False),  # never sent
        (httpx.ConnectTimeout("no answer"), False),
    ],
)  # fmt: skip
async def test_a_search_the_backend_may_bill_is_charged_to_the_request(
    router: respx.MockRouter, http: httpx.AsyncClient, outcome: httpx.Response | Exception, charged: bool
) -> None:
    from openfusion.upstream.trace import start_trace

    router.get("https://api.search.brave.com/res/v1/web/search").mock(side_effect=[outcome])
    trace = start_trace()
    with contextlib.suppress(SearchError):
        await backend(http, "brave").search("q", max_results=5)
    assert trace.charges == ([0.005] if charged else [])


async def test_a_search_cancelled_in_flight_is_charged(router: respx.MockRouter, http: httpx.AsyncClient) -> None:
    """The client left while the backend searched: the API may run (and bill) it all the same."""
    from openfusion.upstream.trace import start_trace

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return httpx.Response(200, json={"web": {"results": []}})

    router.get("https://api.search.brave.com/res/v1/web/search").mock(side_effect=slow)
    trace = start_trace()
    task = asyncio.create_task(backend(http, "brave").search("q", max_results=5))
    await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert trace.charges == [0.005]
