"""Web research fixtures: the local test site on loopback, fake DNS, and fetch clients of both transports."""

from __future__ import annotations

import errno
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from fakes.server import serve_in_thread
from openfusion.upstream.transport import AiohttpTransport
from openfusion.upstream.web.config import FetchConfig
from openfusion.upstream.web.fetch import Fetcher, build_fetch_client
from web.local_site import FakeResolver, Site, off_loopback

SITE_HOST = "site.test"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Safety net: should the SSRF guard ever regress, no socket in these tests may leave loopback."""
    blocked: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guarded_connect(self: socket.socket, address: Any) -> None:
        host = off_loopback(address)
        if host is not None:
            blocked.append(host)
            raise ConnectionRefusedError(f"test safety net: no connection to {host}")
        real_connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        host = off_loopback(address)
        if host is not None:
            blocked.append(host)
            return errno.ECONNREFUSED
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    yield blocked
    assert blocked == [], f"a test tried to connect beyond loopback: {blocked}"


@pytest.fixture(scope="module")
def _served_site() -> Iterator[tuple[Site, int]]:
    site = Site()
    with serve_in_thread(site) as url:
        yield site, httpx.URL(url).port or 80


@pytest.fixture
def site(_served_site: tuple[Site, int]) -> Site:
    """The local site with its request log cleared."""
    served, _ = _served_site
    served.hits.clear()
    return served


@pytest.fixture
def site_url(_served_site: tuple[Site, int]) -> Callable[[str], str]:
    """A URL on the local site by its allow-listed test name (site.test → 127.0.0.1)."""
    _, port = _served_site
    return lambda path: f"http://{SITE_HOST}:{port}{path}"


@pytest.fixture
def site_port(_served_site: tuple[Site, int]) -> int:
    return _served_site[1]


@pytest.fixture
def resolver() -> FakeResolver:
    """DNS for the tests: the site's name on loopback, names that point into refused ranges."""
    return FakeResolver(
        {
            SITE_HOST: ["127.0.0.1"],
            "rebound.test": ["127.0.0.1"],
            "public.test": ["93.184.216.34"],
        }
    )


@pytest.fixture(params=["httpx", "aiohttp"])
async def fetch_client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """A fetch client on httpx's own transport (build_fetch_client) and one on the aiohttp transport."""
    client = build_fetch_client() if request.param == "httpx" else _on_aiohttp()
    async with client:
        yield client


def _on_aiohttp() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=AiohttpTransport(limits=httpx.Limits()), trust_env=False)


@pytest.fixture
def make_fetcher(fetch_client: httpx.AsyncClient, resolver: FakeResolver) -> Callable[..., Fetcher]:
    """A Fetcher on the real transport that lets site.test (and only it) through, unless told otherwise."""

    def make(**config: Any) -> Fetcher:
        settings = {"allow_hosts": [SITE_HOST], "timeout_s": 5.0, **config}
        return Fetcher(FetchConfig(**settings), http=fetch_client, resolver=resolver)

    return make
