"""The embedded store: one SQLite file, driven by the stdlib sqlite3 module on a single dedicated thread."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from openfusion.activity.cached import CacheStatements
from openfusion.activity.migrations import MIGRATIONS, VERSION_TABLE, Migration, latest_version, pending
from openfusion.activity.records import ActivityEntry, ActivityPage, Writable, start_of_day, utc_now
from openfusion.activity.sql import Statements, call_from_row, generation_from_row
from openfusion.activity.store import DataRefused, StoreUnavailable, UnknownCursor
from openfusion.activity.stored import StoredResponse, StoredStatements, stored_from_row, stored_values

log = logging.getLogger("openfusion.activity")

T = TypeVar("T")
SQL = Statements("?")
STORED = StoredStatements("?")
CACHE = CacheStatements("?")
# Prompts and answers: the owner's to read, nobody else's.
_PRIVATE = 0o600
# How long a statement waits for another connection's write lock (SQLite's busy timeout) ...
BUSY_TIMEOUT_S = 5.0
# ... and how many times a batch is tried when it still finds the database busy.
WRITE_ATTEMPTS = 2
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
# Errors about the data sent, not the database's state (busy, read-only, full, I/O): a constraint broken, a value
# of the wrong type or too big, a parameter out of range.
_DATA_ERRORS = (sqlite3.SQLITE_CONSTRAINT, sqlite3.SQLITE_MISMATCH, sqlite3.SQLITE_TOOBIG, sqlite3.SQLITE_RANGE)


# sqlite3 binds an int, float or str as it is, but looks every other value up in its adapter registry
# first. Not found there, the lookup ends in an AttributeError that CPython formats and drops (~0.3 µs
# a value): a fusion's records bind ~50 NULLs and booleans. Registered, each costs one call to C and
# binds as before: None as NULL (an empty dict's `get` of None is None), a bool as 0 or 1.
sqlite3.register_adapter(type(None), {}.get)
sqlite3.register_adapter(bool, int)


def timestamp(value: datetime) -> str:
    """A fixed-width UTC ISO-8601 string, so text order is time order."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def refuses_the_data(exc: sqlite3.Error) -> bool:
    """Whether SQLite (or the sqlite3 module, before running the statement) refused the data sent."""
    if isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError, sqlite3.InterfaceError)):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _DATA_ERRORS


def _generation_row(values: tuple[Any, ...]) -> list[Any]:
    """A generation's values (`EntryRows.generation`) as bound: created_at as its timestamp text."""
    row = list(values)
    row[1] = timestamp(row[1])
    return row


def migrate(conn: sqlite3.Connection, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Apply every pending step, each in its own transaction; returns the schema version now in force."""
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} "
        "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    while True:
        # BEGIN IMMEDIATE takes the write lock first, so two processes opening one file never both migrate.
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = conn.execute(f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}").fetchone()[0]
            steps = pending(current, migrations)
            if not steps:
                conn.execute("COMMIT")
                break
            step = steps[0]
            for statement in step.statements("sqlite"):
                conn.execute(statement)
            conn.execute(
                f"INSERT INTO {VERSION_TABLE} (version, description, applied_at) VALUES (?, ?, ?)",
                (step.version, step.description, timestamp(utc_now())),
            )
            conn.execute("COMMIT")
            log.info("activity schema migrated to version %d (%s)", step.version, step.description)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    if current > latest_version(migrations):
        log.warning("activity database is at schema version %d, newer than this openfusion knows", current)
    return int(current)


def _use_wal(conn: sqlite3.Connection, *, within_s: float = 5.0) -> None:
    """Switch to WAL; the switch needs a moment alone with the file, and SQLite does not wait for it itself."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _make_private(path: Path) -> None:
    """Create the database file readable by its owner only, and tighten one an older version left open.

    SQLite gives the -wal and -shm files it creates the database file's permissions.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, _PRIVATE))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if stat.S_IMODE(file.stat().st_mode) & ~_PRIVATE:
                file.chmod(_PRIVATE)
        except FileNotFoundError:
            continue
        except PermissionError:  # another user's file: say so, it still works
            log.warning("could not make %s private (owner read/write only): it belongs to another user", file)


def _connect(path: Path, migrations: tuple[Migration, ...], busy_timeout_s: float) -> sqlite3.Connection:
    _make_private(path)
    # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), never implicit.
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_s)
    try:
        _use_wal(conn)  # readers (the activity page) never block the writer
        conn.execute("PRAGMA foreign_keys=ON")
        migrate(conn, migrations)
    except BaseException:
        conn.close()
        raise
    return conn


class SqliteStore:
    """ActivityStore on a SQLite file; every statement runs on one worker thread that owns the connection."""

    def __init__(self, conn: sqlite3.Connection, executor: ThreadPoolExecutor, path: Path) -> None:
        self._conn = conn
        self._executor = executor
        self.path = path
        self._closed = False

    @classmethod
    async def open(
        cls, path: Path, *, migrations: tuple[Migration, ...] = MIGRATIONS, busy_timeout_s: float = BUSY_TIMEOUT_S
    ) -> SqliteStore:
        """Open (creating the file and its folder if needed) and migrate."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="activity-sqlite")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _connect, Path(path), migrations, busy_timeout_s)
        except (sqlite3.Error, OSError) as exc:
            executor.shutdown(wait=False)
            raise StoreUnavailable(f"cannot open the activity database {path}: {exc}") from exc
        return cls(conn, executor, Path(path))

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreUnavailable("the activity store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            failed = DataRefused if refuses_the_data(exc) else StoreUnavailable
            raise failed(f"activity database error: {exc}") from exc

    async def write(self, batch: Sequence[Writable]) -> None:
        """Write a batch in one transaction; an id written again replaces the earlier copy."""
        if batch:
            await self._run(self._write, list(batch))

    def _write(self, batch: list[Writable]) -> None:
        statements = SQL.write_batch(batch, _generation_row)
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                self._write_once(statements)
                return
            except sqlite3.OperationalError as exc:
                if attempt == WRITE_ATTEMPTS or exc.sqlite_errorcode & 0xFF not in _BUSY:
                    raise
                # Another process (a worker of the same server, a backup) held the write lock past the
                # busy timeout, or SQLite said busy without waiting (a crashed writer's journal recovering).
                log.info("activity database busy (%s): writing the batch again", exc)
                time.sleep(0.05 * attempt)

    def _write_once(self, statements: list[tuple[str, list[Any]]]) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement, params in statements:
                conn.execute(statement, params)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def get(self, generation_id: str, *, key_name: str | None = None) -> ActivityEntry | None:
        """One generation with its calls (and content, when stored), or None; with `key_name`, only that key's."""
        return await self._run(self._get, generation_id, key_name)

    def _get(self, generation_id: str, key_name: str | None) -> ActivityEntry | None:
        row = self._conn.execute(*SQL.generation(generation_id, key_name)).fetchone()
        if row is None:
            return None
        calls = self._conn.execute(SQL.select_calls, (generation_id,)).fetchall()
        return ActivityEntry(generation_from_row(row), tuple(call_from_row(c) for c in calls))

    async def list(self, *, limit: int, before: str | None = None, key_name: str | None = None) -> ActivityPage:
        """Generations newest first, without content; `before` is the id the previous page ended with.

        With `key_name`, only that key's generations (and `before` must be one of them).
        """
        return await self._run(self._list, limit, before, key_name)

    def _list(self, limit: int, before: str | None, key_name: str | None) -> ActivityPage:
        after = None
        if before is not None:
            after = self._conn.execute(*SQL.cursor(before, key_name)).fetchone()
            if after is None:
                raise UnknownCursor(before)
        rows = self._conn.execute(*SQL.page(limit + 1, key_name, after)).fetchall()
        # One row past the limit tells whether an older page exists without a COUNT.
        return ActivityPage(tuple(generation_from_row(r) for r in rows[:limit]), has_more=len(rows) > limit)

    async def spent_today(self, key_name: str | None) -> float | None:
        """USD spent since midnight UTC by one key (None: by everyone), where costs are known."""
        since = timestamp(start_of_day())
        if key_name is None:
            row = await self._run(lambda: self._conn.execute(SQL.spent_since, (since,)).fetchone())
        else:
            row = await self._run(lambda: self._conn.execute(SQL.spent_by_key_since, (since, key_name)).fetchone())
        return float(row[0] or 0.0)

    async def save_response(self, stored: StoredResponse) -> None:
        """Keep a response until it expires."""
        values = stored_values(stored, stamp=timestamp)
        await self._run(lambda: self._conn.execute(STORED.insert, values))

    async def load_response(self, response_id: str, *, owner: str, now: datetime) -> StoredResponse | None:
        """The owner's unexpired response of that id, or None."""
        args = (response_id, owner, timestamp(now))
        row = await self._run(lambda: self._conn.execute(STORED.select, args).fetchone())
        return stored_from_row(row) if row is not None else None

    async def purge_responses(self, *, now: datetime, created_before: datetime) -> int:
        """Delete the responses expired by `now` or created before `created_before`; how many."""
        args = (timestamp(now), timestamp(created_before))
        return await self._run(lambda: self._conn.execute(STORED.purge, args).rowcount)

    async def cache_get(self, key: str, *, now: float, touch_every_s: float) -> bytes | None:
        """A cached run's bytes unless absent or expired; reading it marks it used, when its mark is older
        than `touch_every_s` (most hits are then a plain SELECT: no write)."""
        return await self._run(self._cache_get, key, now, touch_every_s)

    def _cache_get(self, key: str, now: float, touch_every_s: float) -> bytes | None:
        row = self._conn.execute(CACHE.get, (key, now)).fetchone()
        if row is None:
            return None
        if row[1] <= now - touch_every_s:
            self._conn.execute(CACHE.touch, (now, key))
        return bytes(row[0])

    async def cache_put(self, key: str, entry: bytes, *, now: float, ttl_s: float, max_bytes: int) -> None:
        """Keep a run until it expires; then drop expired rows, and the least recently used past `max_bytes`."""
        values = (key, now, now + ttl_s, now, len(entry), entry)
        statements: list[tuple[str, list[Any]]] = [
            (CACHE.put, list(values)),
            (CACHE.purge, [now]),
            (CACHE.evict, [max_bytes]),
        ]
        await self._run(self._write_once, statements)

    async def cache_delete(self, key: str) -> None:
        """Forget one cached run."""
        await self._run(lambda: self._conn.execute(CACHE.delete, (key,)))

    async def cache_usage(self) -> tuple[int, int]:
        """How many runs are cached, and their bytes."""
        row = await self._run(lambda: self._conn.execute(CACHE.usage).fetchone())
        return int(row[0]), int(row[1])

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""
        await self._run(lambda: self._conn.execute("SELECT 1").fetchone())

    async def schema_version(self) -> int:
        """The highest applied migration."""
        row = await self._run(lambda: self._conn.execute(f"SELECT MAX(version) FROM {VERSION_TABLE}").fetchone())
        return int(row[0] or 0)

    async def close(self) -> None:
        """Close the connection and stop the worker thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._conn.close)
        finally:
            self._executor.shutdown(wait=True)
