"""docker/'s gateway (nginx before the replicas): the brake on wrong keys stops the guesser, not every client.

The replicas count wrong keys by the client's address. Behind nginx they see nginx's unless they believe its
X-Forwarded-For, and they believe it only if nginx writes it alone: a client's own header must not pick the
address. Here nginx runs docker/'s template and connects from an address of its own (127.0.0.9, as its container's
in compose), and the replica gets compose's environment for it. Clients connect from 127.0.0.2 (the victim) and
127.0.0.3 (the guesser). Marked `topology`: run by .ci/run's gateway stage, where nginx is installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from e2e.gateway import nginx, nginx_binary
from e2e.processes import provider_config, serve
from fakes.upstream import FakeUpstream

pytestmark = [pytest.mark.e2e, pytest.mark.topology]

COMPOSE = Path(__file__).resolve().parents[2] / "docker" / "compose.gateway.yaml"
KEY = "sk-gateway-client-4f9a2c7e1d0b"
NGINX_ADDRESS, VICTIM, GUESSER = "127.0.0.9", "127.0.0.2", "127.0.0.3"


def replica_environment() -> dict[str, str]:
    """What compose.gateway.yaml sets for the replicas about proxies (nothing else of it applies here)."""
    environment = yaml.safe_load(COMPOSE.read_text())["services"]["openfusion-replica"]["environment"]
    return {name: str(environment[name]) for name in ("FORWARDED_ALLOW_IPS",) if name in environment}


def client(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


@pytest.fixture
def gateway(fake_upstream: tuple[FakeUpstream, str], presets_dir: Path, tmp_path: Path) -> Iterator[str]:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (.ci/run installs it for the gateway stage)")
    _, upstream_url = fake_upstream
    config = provider_config(upstream_url, top="[limits]\nauth_failures = 3\n")
    env = {"OPENFUSION_API_KEYS": KEY, **replica_environment()}
    with serve(config, presets_dir, tmp_path / "replica", env=env) as replica:
        replicas = [replica.url.removeprefix("http://")]
        with nginx(binary, replicas, tmp_path / "nginx", source=NGINX_ADDRESS) as served:
            yield served.url


def test_a_guesser_behind_the_gateway_brakes_itself_not_the_other_clients(gateway: str) -> None:
    with client(VICTIM) as victim, client(GUESSER) as guesser:
        assert victim.get(f"{gateway}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        for attempt in range(3):
            # Wrong keys, sent as if from the victim: a header the client sets must not pick the address.
            wrong = {"Authorization": f"Bearer sk-wrong-guess-{attempt:012d}", "X-Forwarded-For": VICTIM}
            assert guesser.get(f"{gateway}/v1/models", headers=wrong).status_code == 401

        braked = guesser.get(f"{gateway}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        served = victim.get(f"{gateway}/v1/models", headers={"Authorization": f"Bearer {KEY}"})

    assert braked.status_code == 429 and braked.json()["error"]["code"] == "auth_failures"  # the guesser, right key too
    assert served.status_code == 200  # the victim is served
