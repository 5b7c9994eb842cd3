"""Component fixtures: the real UpstreamClient over httpx, with respx standing in for the provider."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import respx

from component.support import COMPLETIONS_URL, VALID_ANALYSIS, MakeClient, ScriptedUpstream, make_registry
from openfusion.settings import RetrySettings
from openfusion.upstream.client import UpstreamClient
from openfusion.upstream.providers import ProviderRegistry


@pytest.fixture
def mock_router() -> Iterator[respx.MockRouter]:
    """respx patches httpx's default transport; any request to an unmocked URL fails the test."""
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


@pytest.fixture
def upstream(mock_router: respx.MockRouter) -> respx.Route:
    """The provider's chat-completions endpoint; tests set its return_value / side_effect."""
    return mock_router.post(COMPLETIONS_URL)


@pytest.fixture
async def make_client(mock_router: respx.MockRouter) -> AsyncIterator[MakeClient]:
    """Build UpstreamClients (no backoff by default); their HTTP clients are closed afterwards."""
    http_clients: list[httpx.AsyncClient] = []

    def make(registry: ProviderRegistry | None = None, **retry: Any) -> UpstreamClient:
        http = httpx.AsyncClient(trust_env=False)
        http_clients.append(http)
        settings = RetrySettings(**{"initial_backoff_s": 0, "max_backoff_s": 0, **retry})
        return UpstreamClient(http, registry or make_registry(), settings)

    yield make
    for http in http_clients:
        await http.aclose()


@pytest.fixture
def client(make_client: MakeClient) -> UpstreamClient:
    return make_client()


@pytest.fixture
def fake(upstream: respx.Route) -> ScriptedUpstream:
    """A provider answering per model: panelists up/a, up/b, up/c, judge up/judge, synthesizer up/synth."""
    scripted = ScriptedUpstream()
    for name in ("a", "b", "c"):
        scripted.script(name, f"Answer from {name}.")
    scripted.script("judge", orjson.dumps(VALID_ANALYSIS).decode())
    scripted.script("synth", "The fused final answer.")
    upstream.mock(side_effect=scripted)
    return scripted
