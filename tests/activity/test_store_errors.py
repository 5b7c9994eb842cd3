"""A failing activity database tells clients nothing about where it is: host, port, database and role stay in the log.

The real server on a real PostgreSQL database, reached as a role of its own; the role is then barred from
logging in and its connections are ended, so every later read fails the way an outage or a revoked
credential does.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from conftest import POSTGRES_ADMIN_URL
from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, Script
from openfusion.app import create_app
from openfusion.settings import ProviderConfig, Settings

from .conftest import PASSWORD


def _cut_off(role: str) -> None:
    """Bar the role from logging in and end its connections: the server's pool cannot reconnect."""
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER ROLE "{role}" NOLOGIN')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))


def test_database_errors_reach_clients_without_host_port_database_or_role(
    fake_upstream: tuple[FakeUpstream, str],
    database: tuple[str, str, str],
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, upstream_url = fake_upstream
    fake.reset()
    fake.script("judge", Script(content='{"consensus": []}'))
    url, name, role = database
    host, port = POSTGRES_ADMIN_URL.split("@", 1)[1].rsplit("/", 1)[0].rsplit(":", 1)
    provider = ProviderConfig(name="fake", base_url=f"{upstream_url}/v1", models=["fake/*"], strip_prefix=True)
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "solo.toml").write_text('analysis_models = ["fake/a"]\nmodel = "fake/judge"\n')
    settings = Settings(providers=[provider], builtin_providers=False, presets_dir=presets, default_preset="solo")
    app = create_app(settings, environ={"DATABASE_URL": url})

    with caplog.at_level(logging.WARNING), serve_in_thread(app) as server:
        assert httpx.get(f"{server}/v1/activity").status_code == 200  # the store works
        _cut_off(role)
        paths = ["/v1/activity", "/api/v1/generation?id=gen-x", "/activity", "/activity/gen-x", "/readyz"]
        # At once: each waits for the pool's connect timeout (10 s) before it fails.
        with ThreadPoolExecutor(len(paths)) as pool:
            answers = list(pool.map(lambda path: httpx.get(f"{server}{path}", timeout=60), paths))

    for answer in answers[:4]:
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert error["code"] == "activity_store_unavailable"
        assert error["message"] == "The activity store is unavailable; try again later."
    for answer in answers:
        for secret in (host, f":{port}", port, name, role, PASSWORD, "postgres"):
            assert secret not in answer.text, (secret, answer.text)
    assert answers[4].json()["checks"]["activity_store"] != "ok"
    # The operator's log says where and why, without the password.
    logged = caplog.text
    assert f"{host}:{port}/{name}" in logged and "not permitted to log in" in logged
    assert PASSWORD not in logged
