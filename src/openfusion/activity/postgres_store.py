"""The shared store: PostgreSQL through psycopg 3's async connection pool, so replicas share one history."""

from __future__ import annotations

import logging
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import psycopg
from psycopg_pool import AsyncConnectionPool

from openfusion.activity.cached import CacheStatements
from openfusion.activity.cancellation import ends_when_cancelled
from openfusion.activity.migrations import MIGRATIONS, VERSION_TABLE, Migration, latest_version, pending
from openfusion.activity.records import ActivityEntry, ActivityPage, Writable, start_of_day
from openfusion.activity.sql import Statements, call_from_row, generation_from_row
from openfusion.activity.store import DataRefused, StoreUnavailable, UnknownCursor, redact_url
from openfusion.activity.stored import StoredResponse, StoredStatements, stored_from_row, stored_values

log = logging.getLogger("openfusion.activity")

SQL = Statements("%s")
STORED = StoredStatements("%s")
CACHE = CacheStatements("%s")
# Replicas starting together serialize their migrations on this transaction-level advisory lock.
_MIGRATION_LOCK = zlib.crc32(b"openfusion.activity.migrations")
# How long close() waits for the pool's own tasks (a reconnection, say: it hangs while the server does not
# answer); past it the pool is closed anyway, and the event loop cancels what is left when the process ends.
CLOSE_TIMEOUT_S = 0.5
# SQLSTATE classes of errors about the data sent, not the database's state: data exception, integrity constraint
# violation, program limit exceeded (a row or a value too big). Every other error may pass: a read-only or locked
# database, a full disk, a deadlock, a cancelled statement, a lost connection.
_DATA_ERRORS = ("22", "23", "54")
# A session that is read-only stays so (a standby after a failover, `default_transaction_read_only`): closed, its
# connection is replaced by one opened anew, which may reach the server that writes.
_READ_ONLY_TRANSACTION = "25006"


def refuses_the_data(exc: psycopg.Error) -> bool:
    """Whether the database (or psycopg, before sending) refused the data sent, rather than failed for its state."""
    if exc.sqlstate:
        return exc.sqlstate[:2] in _DATA_ERRORS
    # Raised before anything was sent: a value psycopg cannot send (a NUL in text, an object it cannot adapt).
    return isinstance(exc, (psycopg.DataError, psycopg.ProgrammingError))


def describe(exc: psycopg.Error) -> str:
    """The error's primary message only: PostgreSQL's DETAIL can quote row values (stored content) verbatim."""
    primary = exc.diag.message_primary if exc.diag else None
    lines = (primary or str(exc) or type(exc).__name__).splitlines()
    return lines[0] if lines else type(exc).__name__


async def migrate(conn: psycopg.AsyncConnection, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Apply every pending step in one transaction under an advisory lock; returns the version in force."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER PRIMARY KEY, "
            "description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute(f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}")
        row = await cursor.fetchone()
        current = int(row[0]) if row else 0
        for step in pending(current, migrations):
            for statement in step.statements("postgres"):
                await conn.execute(statement)
            await conn.execute(
                f"INSERT INTO {VERSION_TABLE} (version, description) VALUES (%s, %s)",
                (step.version, step.description),
            )
            log.info("activity schema migrated to version %d (%s)", step.version, step.description)
            current = step.version
    if current > latest_version(migrations):
        log.warning("activity database is at schema version %d, newer than this openfusion knows", current)
    return current


class PostgresStore:
    """ActivityStore on PostgreSQL; every call ends at once when cancelled, even with the server silent."""

    def __init__(self, pool: AsyncConnectionPool, url: str) -> None:
        self._pool = pool
        self._where = redact_url(url)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        pool_max_size: int = 4,
        timeout_s: float = 10.0,
        migrations: tuple[Migration, ...] = MIGRATIONS,
    ) -> PostgresStore:
        """Connect (failing within `timeout_s` when the server is unreachable) and migrate."""
        pool: AsyncConnectionPool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_max_size,
            open=False,
            timeout=timeout_s,
            # A server restart leaves dead connections in the pool: check each before handing it out.
            check=AsyncConnectionPool.check_connection,
            name="openfusion-activity",
        )
        try:
            await pool.open(wait=True, timeout=timeout_s)
            async with pool.connection() as conn:
                await migrate(conn, migrations)
        except psycopg.Error as exc:
            await pool.close()
            raise StoreUnavailable(f"cannot open the activity database at {redact_url(url)}: {describe(exc)}") from exc
        return cls(pool, url)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        try:
            async with self._pool.connection() as conn:
                try:
                    yield conn
                except psycopg.Error as exc:
                    if exc.sqlstate == _READ_ONLY_TRANSACTION:
                        await conn.close()  # the pool opens another in its place
                    raise
        except psycopg.Error as exc:
            failed = DataRefused if refuses_the_data(exc) else StoreUnavailable
            raise failed(f"activity database error at {self._where}: {describe(exc)}") from exc

    @ends_when_cancelled
    async def write(self, batch: Sequence[Writable]) -> None:
        """Write a batch in one transaction; an id written again replaces the earlier copy."""
        if not batch:
            return
        statements = SQL.write_batch(batch)  # the values bound as they are: created_at a `TIMESTAMPTZ`
        async with self._connection() as conn, conn.transaction(), conn.cursor() as cursor:
            for statement, params in statements:
                await cursor.execute(statement, params)

    @ends_when_cancelled
    async def get(self, generation_id: str, *, key_name: str | None = None) -> ActivityEntry | None:
        """One generation with its calls (and content, when stored), or None; with `key_name`, only that key's."""
        async with self._connection() as conn:
            row = await (await conn.execute(*SQL.generation(generation_id, key_name))).fetchone()
            if row is None:
                return None
            calls = await (await conn.execute(SQL.select_calls, (generation_id,))).fetchall()
        return ActivityEntry(generation_from_row(row), tuple(call_from_row(c) for c in calls))

    @ends_when_cancelled
    async def list(self, *, limit: int, before: str | None = None, key_name: str | None = None) -> ActivityPage:
        """Generations newest first, without content; `before` is the id the previous page ended with.

        With `key_name`, only that key's generations (and `before` must be one of them).
        """
        async with self._connection() as conn:
            after = None
            if before is not None:
                after = await (await conn.execute(*SQL.cursor(before, key_name))).fetchone()
                if after is None:
                    raise UnknownCursor(before)
            rows = await (await conn.execute(*SQL.page(limit + 1, key_name, after))).fetchall()
        return ActivityPage(tuple(generation_from_row(r) for r in rows[:limit]), has_more=len(rows) > limit)

    @ends_when_cancelled
    async def spent_today(self, key_name: str | None) -> float | None:
        """USD spent since midnight UTC by one key (None: by everyone), where costs are known."""
        async with self._connection() as conn:
            if key_name is None:
                cursor = await conn.execute(SQL.spent_since, (start_of_day(),))
            else:
                cursor = await conn.execute(SQL.spent_by_key_since, (start_of_day(), key_name))
            row = await cursor.fetchone()
        return float(row[0] or 0.0) if row else 0.0

    @ends_when_cancelled
    async def save_response(self, stored: StoredResponse) -> None:
        """Keep a response until it expires."""
        async with self._connection() as conn:
            await conn.execute(STORED.insert, stored_values(stored))

    @ends_when_cancelled
    async def load_response(self, response_id: str, *, owner: str, now: datetime) -> StoredResponse | None:
        """The owner's unexpired response of that id, or None."""
        async with self._connection() as conn:
            row = await (await conn.execute(STORED.select, (response_id, owner, now))).fetchone()
        return stored_from_row(row) if row is not None else None

    @ends_when_cancelled
    async def purge_responses(self, *, now: datetime, created_before: datetime) -> int:
        """Delete the responses expired by `now` or created before `created_before`; how many."""
        async with self._connection() as conn:
            cursor = await conn.execute(STORED.purge, (now, created_before))
        return cursor.rowcount

    @ends_when_cancelled
    async def cache_get(self, key: str, *, now: float, touch_every_s: float) -> bytes | None:
        """A cached run's bytes unless absent or expired; reading it marks it used, when its mark is older
        than `touch_every_s` (most hits are then a plain SELECT: no write)."""
        async with self._connection() as conn:
            row = await (await conn.execute(CACHE.get, (key, now))).fetchone()
            if row is not None and row[1] <= now - touch_every_s:
                await conn.execute(CACHE.touch, (now, key))
        return bytes(row[0]) if row is not None else None

    @ends_when_cancelled
    async def cache_put(self, key: str, entry: bytes, *, now: float, ttl_s: float, max_bytes: int) -> None:
        """Keep a run until it expires; then drop expired rows, and the least recently used past `max_bytes`."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute(CACHE.put, (key, now, now + ttl_s, now, len(entry), entry))
            await conn.execute(CACHE.purge, (now,))
            await conn.execute(CACHE.evict, (max_bytes,))

    @ends_when_cancelled
    async def cache_delete(self, key: str) -> None:
        """Forget one cached run."""
        async with self._connection() as conn:
            await conn.execute(CACHE.delete, (key,))

    @ends_when_cancelled
    async def cache_usage(self) -> tuple[int, int]:
        """How many runs are cached, and their bytes."""
        async with self._connection() as conn:
            row = await (await conn.execute(CACHE.usage)).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    @ends_when_cancelled
    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""
        async with self._connection() as conn:
            await conn.execute("SELECT 1")

    @ends_when_cancelled
    async def schema_version(self) -> int:
        """The highest applied migration."""
        async with self._connection() as conn:
            row = await (await conn.execute(f"SELECT MAX(version) FROM {VERSION_TABLE}")).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def close(self) -> None:
        """Close every pooled connection (idempotent), within about `CLOSE_TIMEOUT_S`."""
        await self._pool.close(timeout=CLOSE_TIMEOUT_S)
