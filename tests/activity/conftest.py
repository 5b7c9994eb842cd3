"""Activity fixtures: a fresh SQLite file and a fresh PostgreSQL schema per test, in a database per session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openfusion.activity import ActivityStore
from openfusion.activity.postgres_store import PostgresStore
from openfusion.activity.sqlite_store import SqliteStore


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
