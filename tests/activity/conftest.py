"""Activity fixtures: a fresh SQLite file and a fresh PostgreSQL schema per test, in a database per session."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from openfusion.activity import ActivityStore
from openfusion.activity.postgres_store import PostgresStore
from openfusion.activity.sqlite_store import SqliteStore

# The local server (trust auth). CI starts it when it is down; a missing server fails these tests, never skips them.
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
_START_HINT = "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def _admin() -> psycopg.Connection:
    try:
        return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # failed outside the except block, so no chained traceback
        message = f"PostgreSQL is required for the activity tests and is not reachable: {exc}\n{_START_HINT}"
    pytest.fail(message, pytrace=False)


def _with_database(url: str, database: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A uniquely named database for this test session, dropped afterwards; yields its URL."""
    name = f"openfusion_test_{os.getpid()}_{secrets.token_hex(4)}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(POSTGRES_ADMIN_URL, name)
    finally:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_database: str) -> Iterator[str]:
    """A fresh, empty schema for one test (dropped afterwards); the URL puts it first on the search_path."""
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{postgres_database}?options={quote(f'-csearch_path={schema}', safe='')}"
    finally:
        with psycopg.connect(postgres_database, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


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
