"""A provider that cannot be reached: the error names the real cause (DNS, refused port, TLS), everywhere it shows."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream
from openfusion.settings import ProviderConfig

from .test_activity_wiring import generation

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def untrusted_tls_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fake upstream over HTTPS whose certificate comes from a CA openfusion does not trust."""
    fake, directory = FakeUpstream(), tmp_path_factory.mktemp("tls")
    certificate = trustme.CA().issue_cert("127.0.0.1")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    certificate.cert_chain_pems[0].write_to_path(str(cert_file))
    certificate.private_key_pem.write_to_path(str(key_file))
    with serve_in_thread(fake.app, tls=(str(cert_file), str(key_file))) as url:
        yield url


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broken_base_url(kind: str, tls_url: str) -> str:
    return {
        # .invalid never resolves (RFC 2606), on any network.
        "dns": "http://openfusion-upstream.invalid/v1",
        "refused": f"http://127.0.0.1:{closed_port()}/v1",
        "tls": f"{tls_url}/v1",
    }[kind]


EXPECTED = {
    "dns": ("name_not_resolved", "could not be reached during the request: host name not resolved (DNS)"),
    "refused": ("connection_refused", "could not be reached during the request: connection refused"),
    "tls": ("tls_error", "could not be reached during the request: TLS certificate not accepted"),
}


@pytest.fixture
def broken_server(
    upstream: FakeUpstream, fake_upstream: tuple[FakeUpstream, str], start_server: Any, untrusted_tls_upstream: str
) -> Iterator[Any]:
    """openfusion with the fake provider plus a provider `broken` that cannot be reached in the given way."""
    _, fake_url = fake_upstream

    def start(kind: str, **overrides: Any) -> Any:
        providers = [
            ProviderConfig(name="fake", base_url=f"{fake_url}/v1", api_key_env="FAKE_KEY", models=["fake/*"],
                           strip_prefix=True),
            ProviderConfig(name="broken", base_url=broken_base_url(kind, untrusted_tls_upstream),
                           api_key_env="FAKE_KEY", models=["broken/*"], strip_prefix=True),
        ]  # fmt: skip
        return start_server(providers=providers, retry={"max_attempts": 1}, **overrides)

    yield start


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("kind", list(EXPECTED))
def test_a_pass_through_names_the_cause(
    broken_server: Any, kind: str, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    cause, words = EXPECTED[kind]
    caplog.set_level(logging.WARNING, logger="openfusion")

    with broken_server(kind, http={"transport": transport}) as url:
        response = httpx.post(f"{url}{CHAT}", json={"model": "broken/m", "messages": HI}, timeout=30)

    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "upstream_unreachable"
    assert error["message"].startswith(f"broken/m (broken) {words}"), error["message"]
    assert "ConnectTimeout" not in error["message"]
    assert error["metadata"]["cause"] == cause
    logged = [r for r in caplog.records if r.name == "openfusion.upstream" and words in r.getMessage()]
    assert logged and getattr(logged[0], "cause", None) == cause


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_a_fusion_panelist_names_the_cause(broken_server: Any, kind: str, tmp_path: Path) -> None:
    cause, words = EXPECTED[kind]
    plugin = {"id": "fusion", "analysis_models": ["fake/a", "broken/m"]}
    body = {"model": "fusion/trio", "messages": HI, "plugins": [plugin]}

    with broken_server(kind, activity={"path": tmp_path / "activity.sqlite3"}) as url:
        response = httpx.post(f"{url}{CHAT}", json=body, timeout=30)
        record = generation(url, response.headers["x-generation-id"])

    assert response.status_code == 200, response.text
    failed = response.json()["fusion"]["panel"][1]
    assert failed["status"] == "error" and failed["error"]["code"] == "upstream_unreachable"
    assert failed["error"]["cause"] == cause
    assert words in failed["error"]["message"]
    # The activity record's call says the same; a request that never left costs nothing and is fully counted.
    [call] = [c for c in record["calls"] if c["model"] == "broken/m"]
    assert words in call["error"] and call["cost"] == 0
    assert response.json()["fusion"]["usage_complete"] is True
