"""Activity fixtures: a fresh SQLite file and a fresh PostgreSQL schema per test, in a database per session, or a
database of a test's own."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from conftest import POSTGRES_ADMIN_URL
from openfusion.activity import ActivityStore
from openfusion.activity.postgres_store import PostgresStore
from openfusion.activity.sqlite_store import SqliteStore
from openfusion.settings import ProviderConfig, Settings

PASSWORD = "pw-activity-db-7f3c9e"  # the local server trusts loopback, so any password logs in


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """A path for a SQLite file that does not exist yet (nor does its folder)."""
    return tmp_path / "state" / "activity.sqlite3"


@pytest.fixture
async def sqlite_store(sqlite_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(sqlite_path)
    yield store
    await store.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, sqlite_path: Path) -> AsyncIterator[ActivityStore]:
    """Each store test runs against a real SQLite file and a real PostgreSQL schema."""
    opened: ActivityStore
    if request.param == "sqlite":
        opened = await SqliteStore.open(sqlite_path)
    else:
        opened = await PostgresStore.open(request.getfixturevalue("postgres_url"))
    yield opened
    await opened.close()


@pytest.fixture
def database() -> Iterator[tuple[str, str, str]]:
    """A database owned by a role of its own: (URL with the role and a password, database name, role name)."""
    suffix = secrets.token_hex(4)
    name, role = f"openfusion_outage_{suffix}", f"openfusion_role_{suffix}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
    host = POSTGRES_ADMIN_URL.split("@", 1)[1].rsplit("/", 1)[0]
    try:
        yield f"postgresql://{role}:{PASSWORD}@{host}/{name}", name, role
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def server_settings(upstream_url: str, tmp_path: Path) -> Settings:
    """A server answering the `solo` preset from the fake upstream at `upstream_url`, its records in PostgreSQL
    (`DATABASE_URL`, given with the app) sent every 50 ms and each waited for by its response for 1 s at most."""
    provider = ProviderConfig(name="fake", base_url=f"{upstream_url}/v1", models=["fake/*"], strip_prefix=True)
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "solo.toml").write_text('analysis_models = ["fake/a"]\nmodel = "fake/judge"\n')
    # A response waits for its record (record_before_end, on with PostgreSQL) for at most write_timeout_s.
    activity = {"write_timeout_s": 1.0, "flush_interval_s": 0.05}
    return Settings(
        providers=[provider], builtin_providers=False, presets_dir=presets, default_preset="solo", activity=activity
    )


def post_chat(server: str) -> str:
    """A chat completion from the `solo` server, answered: its generation id."""
    body = {"model": "fake/a", "messages": [{"role": "user", "content": "Hi"}]}
    response = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.headers["x-generation-id"]
