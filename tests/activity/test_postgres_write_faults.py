"""PostgreSQL that answers but cannot write: the records of the requests served meanwhile are written once it can.

The real server on a real PostgreSQL database of the test's own. The database keeps answering (pings, `/readyz`)
while every write fails: its sessions turned read-only (as on a standby after a failover), or the table held
locked by another connection past the write's time limit. Then the fault is lifted, and nothing may be lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path

import httpx
import psycopg
import pytest

from activity.conftest import PASSWORD, post_chat, server_settings
from activity.support import T0, Told, make_entry
from conftest import POSTGRES_ADMIN_URL
from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, wait_until
from openfusion.activity import ActivityWriter, Tokens, WriterStats
from openfusion.activity.postgres_store import PostgresStore
from openfusion.app import create_app


def _admin(database: str) -> psycopg.Connection:
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    return psycopg.connect(f"{base}/{database}", autocommit=True, connect_timeout=5)


def _stored(database: str) -> set[str]:
    with _admin(database) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM generations").fetchall()}


def _read_only(database: str, *, on: bool) -> None:
    """Turn the database's sessions read-only (as a standby's after a failover), ending those open; or lift it."""
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:  # not in `database`
        if not on:
            admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
            return
        admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )


@contextmanager
def _served(
    fake_upstream: tuple[FakeUpstream, str], url: str, tmp_path: Path
) -> Iterator[tuple[str, Callable[[], int]]]:
    """The server on the database at `url`: (its base URL, how many records it lost so far)."""
    fake, upstream_url = fake_upstream
    fake.reset()
    app = create_app(server_settings(upstream_url, tmp_path), environ={"DATABASE_URL": url})
    with serve_in_thread(app) as server:
        yield server, lambda: app.state.openfusion.activity.stats.lost


def _ready(server: str) -> int:
    return httpx.get(f"{server}/readyz", timeout=10).status_code


@contextmanager
def _sessions_read_only(database: str) -> Iterator[Callable[[], set[str]]]:
    """A failover: the sessions the pool opens meanwhile are on a read-only server. Yields what is stored."""
    _read_only(database, on=True)
    try:
        yield lambda: _stored(database)
    finally:
        _read_only(database, on=False)


@contextmanager
def _table_locked(database: str) -> Iterator[Callable[[], set[str]]]:
    """A migration, a VACUUM FULL: the table held past the write's time limit. Yields what is stored, as the
    connection holding the lock sees it (any other waits for the lock)."""
    with _admin(database) as locker, locker.transaction():
        locker.execute("LOCK TABLE generations IN ACCESS EXCLUSIVE MODE")
        yield lambda: {row[0] for row in locker.execute("SELECT id FROM generations").fetchall()}


@pytest.mark.parametrize("fault", [_sessions_read_only, _table_locked], ids=["read-only", "table-locked"])
def test_records_of_requests_served_while_postgresql_cannot_write_are_written_once_it_can(
    fake_upstream: tuple[FakeUpstream, str],
    database: tuple[str, str, str],
    tmp_path: Path,
    fault: Callable[[str], AbstractContextManager[Callable[[], set[str]]]],
) -> None:
    url, name, _ = database
    with _served(fake_upstream, url, tmp_path) as (server, lost):
        before = post_chat(server)
        assert before in _stored(name)
        with fault(name) as stored:
            during = [post_chat(server) for _ in range(3)]  # served all the same, each after write_timeout_s at most
            assert _ready(server) == 200  # the database answers: only its writes fail
            assert not set(during) & stored()  # the fault: none of them could be written
        wait_until(lambda: set(during) <= _stored(name), timeout=30)
        assert lost() == 0


async def test_a_bad_record_queued_while_postgresql_is_read_only_costs_only_itself_once_it_takes_writes(
    database: tuple[str, str, str],
) -> None:
    url, name, _ = database
    store = await PostgresStore.open(url)
    huge = Tokens(prompt_tokens=2**63, completion_tokens=1, total_tokens=2**63 + 1)  # past BIGINT: a data error
    bad = make_entry("gen-bad", usage=huge)
    good = [make_entry(f"gen-good-{i}", created_at=T0 + timedelta(seconds=i)) for i in range(3)]
    told = Told(4)
    try:
        _read_only(name, on=True)
        async with ActivityWriter(store, batch_size=10, flush_interval_s=0.01, write_timeout_s=2.0) as writer:
            for entry in (good[0], bad, *good[1:]):
                writer.record(entry.generation, entry.calls, on_written=told.of(entry.generation.id))
            await asyncio.sleep(1.0)  # tried at once, then 0.5 s later: the server writes nothing
            assert writer.stats == WriterStats(written=0, dropped=0, failed=0, queued=4) and not told.by_id
            _read_only(name, on=False)
            await asyncio.wait_for(told.everything(), timeout=15)
        assert told.by_id == {"gen-good-0": True, "gen-bad": False, "gen-good-1": True, "gen-good-2": True}
        assert writer.stats == WriterStats(written=3, dropped=0, failed=1, queued=0)
        assert _stored(name) == {e.generation.id for e in good}
    finally:
        await store.close()


async def test_a_record_past_the_statement_time_limit_is_set_aside_while_the_others_are_written(
    database: tuple[str, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A write the database always cancels (its statement_timeout, shorter than the writer's time limit) is not
    the database's state: the records around it are written, and it is set aside after a few tries, logged
    without the database's password, counted; it does not hold the queue until it fills."""
    url, name, role = database
    with _admin(name) as admin:  # every session of the store: a statement ends after 800 ms
        admin.execute(f'ALTER ROLE "{role}" IN DATABASE "{name}" SET statement_timeout = 800')
    store = await PostgresStore.open(url)
    await store.write([make_entry("gen-stuck")])  # written again, it replaces this row, held locked below
    told: dict[str, bool] = {}
    goods: list[str] = []
    news = asyncio.Event()

    def tell(generation_id: str, written: bool) -> None:
        told[generation_id] = written
        news.set()

    try:
        with _admin(name) as locker, locker.transaction(), caplog.at_level(logging.WARNING, "openfusion.activity"):
            locker.execute("SELECT id FROM generations WHERE id = 'gen-stuck' FOR UPDATE")
            async with ActivityWriter(store, batch_size=10, flush_interval_s=0.01, write_timeout_s=5.0) as writer:

                def record(generation_id: str, minutes: int) -> None:
                    entry = make_entry(generation_id, created_at=T0 + timedelta(minutes=minutes))
                    writer.record(entry.generation, entry.calls, on_written=partial(tell, generation_id))

                for number in range(120):  # traffic goes on: a record every 0.25 s
                    if number == 1:
                        record("gen-stuck", number)
                    goods.append(f"gen-good-{number}")
                    record(goods[-1], number)
                    await asyncio.sleep(0.25)
                    if "gen-stuck" in told:
                        break
                async with asyncio.timeout(15):
                    while len(told) < len(goods) + 1:
                        news.clear()
                        await news.wait()
                stats = writer.stats
        assert told.pop("gen-stuck") is False
        assert told == dict.fromkeys(goods, True)
        assert stats == WriterStats(written=len(goods), dropped=0, failed=1, queued=0, set_aside=1)
        assert _stored(name) == {"gen-stuck", *goods}  # the earlier copy of the record set aside stays
        [warning] = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
        assert "gen-stuck" in warning and "statement timeout" in warning
        assert PASSWORD not in caplog.text
    finally:
        await store.close()


def _both(*callbacks: Callable[[bool], None]) -> Callable[[bool], None]:
    def told(written: bool) -> None:
        for callback in callbacks:
            callback(written)

    return told


async def test_a_lone_record_past_the_statement_time_limit_is_set_aside_with_no_other_traffic(
    database: tuple[str, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """No record comes after the one the database cancels every time: the database still writes (the last record
    written, written again, goes through), so each try counts, and the record is set aside after 3 tries rather than
    tried for ever every 10 s."""
    url, name, role = database
    with _admin(name) as admin:  # every session of the store: a statement ends after 800 ms
        admin.execute(f'ALTER ROLE "{role}" IN DATABASE "{name}" SET statement_timeout = 800')
    store = await PostgresStore.open(url)
    await store.write([make_entry("gen-stuck")])  # written again, it replaces this row, held locked below
    first, told = Told(1), Told(2)
    try:
        with _admin(name) as locker, locker.transaction(), caplog.at_level(logging.WARNING, "openfusion.activity"):
            locker.execute("SELECT id FROM generations WHERE id = 'gen-stuck' FOR UPDATE")
            async with ActivityWriter(store, batch_size=10, flush_interval_s=0.01, write_timeout_s=5.0) as writer:
                good = make_entry("gen-good", created_at=T0)
                writer.record(good.generation, good.calls, on_written=_both(first, told.of("gen-good")))
                await asyncio.wait_for(first.everything(), timeout=10)
                stuck = make_entry("gen-stuck", created_at=T0 + timedelta(minutes=1))
                writer.record(stuck.generation, stuck.calls, on_written=told.of("gen-stuck"))
                await asyncio.wait_for(told.everything(), timeout=20)  # 3 tries of 0.8 s, and the waits between
                stats = writer.stats
        assert told.by_id == {"gen-good": True, "gen-stuck": False}
        assert stats == WriterStats(written=1, dropped=0, failed=1, queued=0, set_aside=1)
        assert _stored(name) == {"gen-stuck", "gen-good"}  # the earlier copy of the record set aside stays
        [warning] = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
        assert "gen-stuck" in warning and "after 3 failed writes" in warning and "statement timeout" in warning
        assert PASSWORD not in caplog.text
    finally:
        await store.close()


async def test_a_lone_record_queued_while_postgresql_is_read_only_is_kept_however_long(
    database: tuple[str, str, str],
) -> None:
    """The database answers but writes nothing: the last record written, written again, fails too, so the lone
    record's failures do not count; after many more tries than a record is given it is still queued, and written
    once the database takes writes."""
    url, name, _ = database
    store = await PostgresStore.open(url)
    first, told = Told(1), Told(2)
    try:
        async with ActivityWriter(store, batch_size=10, flush_interval_s=0.01, write_timeout_s=2.0) as writer:
            good = make_entry("gen-good", created_at=T0)
            writer.record(good.generation, good.calls, on_written=_both(first, told.of("gen-good")))
            await asyncio.wait_for(first.everything(), timeout=10)
            _read_only(name, on=True)
            try:
                later = make_entry("gen-later", created_at=T0 + timedelta(minutes=1))
                writer.record(later.generation, later.calls, on_written=told.of("gen-later"))
                await asyncio.sleep(4.5)  # tried at once, then after 0.5, 1 and 2 s: 4 tries, more than it is given
                assert writer.stats == WriterStats(written=1, dropped=0, failed=0, queued=1)
                assert "gen-later" not in told.by_id and _stored(name) == {"gen-good"}
            finally:
                _read_only(name, on=False)
            await asyncio.wait_for(told.everything(), timeout=40)  # the outage's wait between tries is up to 10 s
        assert told.by_id == {"gen-good": True, "gen-later": True}
        assert writer.stats == WriterStats(written=2, dropped=0, failed=0, queued=0, set_aside=0)
        assert _stored(name) == {"gen-good", "gen-later"}
    finally:
        await store.close()
