"""Shared fixtures: a clean environment for every test, the scripted fake upstream, and real PostgreSQL."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import psycopg
import pytest
import redis

from fakes.anthropic_api import FakeAnthropic
from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream
from openfusion.upstream.providers import builtin_provider_configs

_KEY_VARS = {c.api_key_env for c in builtin_provider_configs() if c.api_key_env}


_SERVICE_VARS = {"DATABASE_URL", "REDIS_URL", "BRAVE_API_KEY", "TAVILY_API_KEY", "EXA_API_KEY"}


@pytest.fixture(scope="session", autouse=True)
def private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test, session fixtures included (a server started once for many tests), writes the user's home state
    (~/.local/state/openfusion): XDG_STATE_HOME and HOME point at temporary directories for the session."""
    base = tmp_path_factory.getbasetemp()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(base / "state"))
        # An app built with an explicit `environ` (no XDG_STATE_HOME in it) falls back to ~/.local/state:
        # the home directory is a temporary one too.
        (base / "home").mkdir(exist_ok=True)
        patch.setenv("HOME", str(base / "home"))
        yield


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No provider key, service URL or openfusion setting leaks in from the developer's shell.

    The default activity store (SQLite under $XDG_STATE_HOME) goes to a temporary directory.
    """
    import os

    for name in list(os.environ):
        if name in _KEY_VARS or name in _SERVICE_VARS or name.startswith("OPENFUSION_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.getbasetemp() / "state"))


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[tuple[FakeUpstream, str]]:
    """The scripted fake OpenAI-compatible upstream under uvicorn, shared by the session; (fake, base URL)."""
    fake = FakeUpstream()
    with serve_in_thread(fake.app) as url:
        yield fake, url


@pytest.fixture
def anthropic_native() -> Iterator[tuple[FakeAnthropic, str]]:
    """A fake provider that speaks Anthropic Messages itself, served in a thread: it and its base URL."""
    fake = FakeAnthropic()
    with serve_in_thread(fake.app) as url:
        yield fake, url


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


REDIS_START = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
    "--dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A fresh key prefix in the real Redis on 127.0.0.1:6379; its keys are deleted afterwards."""
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        client.close()
        pytest.fail(f"Redis is not reachable on 127.0.0.1:6379 ({exc}); start it with: {REDIS_START}")
    prefix = f"openfusion-test-{uuid.uuid4().hex}"
    try:
        yield prefix
    finally:
        # The cache's keys start with the prefix, the limits' with it as a hash tag, `{prefix}`.
        keys = [*client.scan_iter(f"{prefix}*"), *client.scan_iter(f"{{{prefix}}}*")]
        if keys:
            client.delete(*keys)
        client.close()
