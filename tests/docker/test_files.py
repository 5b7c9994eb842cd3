"""Fast checks of the container files (the slow podman build and run is test_image.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

DOCKER = Path(__file__).resolve().parents[2] / "docker"
yaml = pytest.importorskip("yaml")  # PyYAML comes with uvicorn[standard]


def load(name: str) -> dict[str, dict[str, Any]]:
    """The services of one compose file."""
    services: dict[str, dict[str, Any]] = yaml.safe_load((DOCKER / name).read_text())["services"]
    return services


def test_dockerfile_runs_openfusion_as_non_root_with_a_health_check() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${PYTHON_IMAGE}"] * 2  # python:3.11-slim-bookworm
    assert re.search(r"^USER 10001", text, re.M)
    assert re.search(r"^HEALTHCHECK .*/healthz", text, re.M | re.S)
    assert "exec openfusion serve --host" in text
    assert not re.search(r"^(ENV|ARG)\b.*_API_KEY", text, re.M), "keys come from the environment only"


def test_sidecar_app_reaches_openfusion_by_service_name() -> None:
    sidecar = load("compose.yaml")
    assert {"openfusion", "app"} <= sidecar.keys()
    assert sidecar["app"]["environment"]["OPENAI_BASE_URL"] == "http://openfusion:8000/v1"
    assert sidecar["app"]["depends_on"]["openfusion"]["condition"] == "service_healthy"
    assert "ports" not in sidecar["openfusion"], "a sidecar stays on the private network"
    # …which is why it may listen without client keys (openfusion refuses to otherwise).
    assert sidecar["openfusion"]["environment"]["OPENFUSION_ALLOW_OPEN"] == "1"
    assert sidecar["openfusion"]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}


def test_gateway_replicas_share_postgres_and_redis_behind_nginx() -> None:
    gateway = load("compose.gateway.yaml")
    assert {"gateway", "openfusion-replica", "postgres", "redis"} <= gateway.keys()
    replica = gateway["openfusion-replica"]
    assert replica["environment"]["DATABASE_URL"].startswith("postgresql://openfusion:")
    assert replica["environment"]["DATABASE_URL"].endswith("@postgres:5432/openfusion")
    assert replica["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert "OPENROUTER_API_KEY" in replica["environment"], "provider keys are passed through"
    assert replica["environment"]["OPENROUTER_API_KEY"] is None, "…from the shell, never written in the file"
    assert str(replica["deploy"]["replicas"]).endswith(":-3}")
    template = DOCKER / gateway["gateway"]["volumes"][0].split(":")[0]
    assert template.is_file()


def test_the_published_gateway_requires_client_keys_and_a_database_password() -> None:
    # ${VAR:?message}: compose refuses to start while either is unset or empty (no default password).
    gateway = load("compose.gateway.yaml")
    replica, postgres = gateway["openfusion-replica"]["environment"], gateway["postgres"]["environment"]
    assert replica["OPENFUSION_API_KEYS"].startswith("${OPENFUSION_API_KEYS:?set OPENFUSION_API_KEYS ")
    assert "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD " in replica["DATABASE_URL"]
    assert postgres["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD ")
    # The sidecar lives in its own file: compose interpolates every service of a file, profiles or not.
    assert "${" not in (DOCKER / "compose.yaml").read_text().split("services:", 1)[1]


@pytest.mark.parametrize("name", ["compose.yaml", "compose.gateway.yaml"])
def test_compose_stops_openfusion_after_its_shutdown_grace(name: str) -> None:
    from openfusion.settings import Settings

    for service in load(name).values():
        if service.get("build"):
            grace = float(service["stop_grace_period"].removesuffix("s"))
            assert grace >= Settings().shutdown_grace_s + 5


def test_nginx_streams_and_waits_for_long_fusion_runs() -> None:
    conf = (DOCKER / "nginx" / "openfusion.conf.template").read_text()
    assert re.search(r"^\s*proxy_buffering off;", conf, re.M), "SSE must not be buffered"
    assert re.search(r"server openfusion-replica:8000 resolve;", conf)
    read_timeout = re.search(r"proxy_read_timeout (\d+)s;", conf)
    assert read_timeout and int(read_timeout.group(1)) >= 300
    assert re.search(r'proxy_set_header Connection "";', conf) and "proxy_http_version 1.1;" in conf


def test_dockerignore_lets_only_the_build_inputs_through() -> None:
    lines = [ln for ln in (DOCKER.parent / ".dockerignore").read_text().splitlines() if ln and ln[0] != "#"]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!src/", "!presets/"} <= set(lines)


def test_the_image_runs_one_worker_per_usable_cpu_by_default() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^\s+OPENFUSION_WORKERS=auto \\$", text, re.M), "the image's ENV sets OPENFUSION_WORKERS=auto"
