"""The ActivityStore interface, its errors, and `open_store`, which picks SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from openfusion.activity.config import ActivitySettings
from openfusion.activity.records import ActivityEntry, ActivityPage, Writable
from openfusion.errors import ConfigError, OpenFusionError

log = logging.getLogger("openfusion.activity")

POSTGRES_SCHEMES = ("postgresql", "postgres")

T = TypeVar("T")


class StoreUnavailable(OpenFusionError):
    """The activity database cannot be reached or refused an operation.

    Clients are told only that: `detail` (where the database is and why it failed, never a password) is
    for the server's log, and is what `str()` gives.
    """

    status_code = 503
    error_type = "server_error"
    code = "activity_store_unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__("The activity store is unavailable; try again later.")
        self.detail = detail

    def __str__(self) -> str:
        return self.detail

    @property
    def log_message(self) -> str:
        """What the server logs about this error."""
        return self.detail


class DataRefused(StoreUnavailable):
    """The database refused what a call sent (a value out of range, a constraint broken), not the call itself.

    Sent again, the same data would be refused again; other data would be taken. Any other StoreUnavailable
    is about the database's state (down, read-only, locked, full) and may pass.
    """


async def answered_within(call: Awaitable[T], *, timeout_s: float, what: str) -> T:
    """What a store call returns; StoreUnavailable (503) when the database has not answered within `timeout_s`.

    The call ends at the limit even while the database is silent (see ActivityStore).
    """
    try:
        async with asyncio.timeout(timeout_s):
            return await call
    except TimeoutError:
        raise StoreUnavailable(f"{what}: no answer from the activity database within {timeout_s:g} s") from None


class UnknownCursor(LookupError):
    """`list(before=...)` named a generation the store does not have."""


class ActivityStore(Protocol):
    """Where generations and their calls are kept. Every method raises StoreUnavailable on a database failure
    (DataRefused when the database refused the data sent).

    Every method ends at once when cancelled, even while the database does not answer: a caller bounds a call
    with `asyncio.timeout` and gets its TimeoutError at the limit (see `cancellation`).
    """

    async def write(self, batch: Sequence[Writable]) -> None:
        """Write a batch in one transaction; an id written again replaces the earlier copy."""
        ...

    async def get(self, generation_id: str, *, key_name: str | None = None) -> ActivityEntry | None:
        """One generation with its calls (and content, when stored), or None; with `key_name`, only that key's."""
        ...

    async def list(self, *, limit: int, before: str | None = None, key_name: str | None = None) -> ActivityPage:
        """Generations newest first, without content; `before` is the id the previous page ended with.

        With `key_name`, only that key's generations (and `before` must be one of them); None: every key's.
        """
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""
        ...

    async def close(self) -> None:
        """Release the connection(s)."""
        ...


def default_sqlite_path(environ: Mapping[str, str]) -> Path:
    """`$XDG_STATE_HOME/openfusion/activity.sqlite3` (~/.local/state when unset)."""
    state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "openfusion" / "activity.sqlite3"


def redact_url(url: str) -> str:
    """A database URL safe to log: scheme, host, port and database only (never user or password)."""
    parts = urlsplit(url)
    host = parts.hostname or "local socket"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


async def open_store(settings: ActivitySettings, environ: Mapping[str, str]) -> ActivityStore:
    """Open (and migrate) the configured store: PostgreSQL when DATABASE_URL says so, else SQLite at the path."""
    url = environ.get("DATABASE_URL", "").strip()
    if url:
        scheme = urlsplit(url).scheme
        if scheme not in POSTGRES_SCHEMES:
            # The URL itself may hold a password: name only its scheme.
            raise ConfigError(f"DATABASE_URL must be a postgresql:// URL (got scheme {scheme!r})")
        from openfusion.activity.postgres_store import PostgresStore

        log.info("activity store: PostgreSQL at %s", redact_url(url))
        return await PostgresStore.open(url, pool_max_size=settings.pool_max_size)
    from openfusion.activity.sqlite_store import SqliteStore

    path = settings.path or default_sqlite_path(environ)
    log.info("activity store: SQLite at %s", path)
    return await SqliteStore.open(path)
