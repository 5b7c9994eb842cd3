"""The stores against real databases: migrations, round trips, replacement, pagination, and open_store."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from activity.support import FUSION_CALLS, T0, entries_over_time, make_entry
from openfusion.activity import (
    ActivityEntry,
    ActivitySettings,
    ActivityStore,
    PanelText,
    StoreUnavailable,
    UnknownCursor,
    open_store,
)
from openfusion.activity.migrations import MIGRATIONS, latest_version, pending
from openfusion.activity.postgres_store import PostgresStore
from openfusion.activity.sql import _UNSTORABLE, GENERATION_COLUMNS, storable
from openfusion.activity.sqlite_store import SQL, SqliteStore, _generation_row, timestamp
from openfusion.activity.stored import ResponseStore, StoredResponse, stored_values
from openfusion.errors import ConfigError

# A generation as the first schema kept it (the columns of version 1 only).
V1_ROW = (
    "INSERT INTO generations (id, created_at, requested_model, status, latency_ms, streamed) "
    "VALUES (%s, %s, %s, %s, %s, %s)"
)
V1_VALUES = ("gen-old", "2026-01-01T00:00:00.000000+00:00", "fusion", "ok", 12, False)
EXPECTED_TABLES = {"schema_version", "generations", "calls", "stored_responses", "result_cache"}


def _is_file(path: Path) -> bool:
    return path.is_file()


def _sqlite_tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _sqlite_versions(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY version")]


async def test_sqlite_creates_file_folder_and_schema(sqlite_path: Path) -> None:
    assert not sqlite_path.parent.exists()
    store = await SqliteStore.open(sqlite_path)
    try:
        assert _is_file(sqlite_path)
        assert await store.schema_version() == latest_version()
    finally:
        await store.close()
    assert _sqlite_tables(sqlite_path) >= EXPECTED_TABLES
    assert _sqlite_versions(sqlite_path) == [m.version for m in MIGRATIONS]


async def test_sqlite_binds_nulls_and_booleans_as_sqlite_values(sqlite_path: Path) -> None:
    """None is NULL and a bool is the integer 0 or 1 in the file, as other SQLite readers expect."""
    store = await SqliteStore.open(sqlite_path)
    try:
        await store.write([make_entry("gen-types", cost=None, failure_reason=None, streamed=True, cache_hit=False)])
        assert (await store.get("gen-types")) == make_entry(
            "gen-types", cost=None, failure_reason=None, streamed=True, cache_hit=False
        )
    finally:
        await store.close()
    with sqlite3.connect(sqlite_path) as conn:
        row = conn.execute(
            "SELECT typeof(cost), typeof(failure_reason), streamed, typeof(streamed), cache_hit, typeof(cache_hit)"
            " FROM generations WHERE id = 'gen-types'"
        ).fetchone()
    assert row == ("null", "null", 1, "integer", 0, "integer")


async def test_sqlite_upgrades_an_older_schema_and_keeps_its_data(sqlite_path: Path) -> None:
    old = await SqliteStore.open(sqlite_path, migrations=MIGRATIONS[:1])
    assert await old.schema_version() == 1
    await old.close()
    with sqlite3.connect(sqlite_path) as conn:
        conn.execute(V1_ROW.replace("%s", "?"), V1_VALUES)
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "generations_newest_first" not in indexes

    store = await SqliteStore.open(sqlite_path)
    try:
        assert await store.schema_version() == latest_version()
        entry = await store.get("gen-old")
        assert entry is not None and entry.generation.id == "gen-old"
        assert entry.generation.api_type == "completions"  # every request before version 4 was a chat one
    finally:
        await store.close()
    with sqlite3.connect(sqlite_path) as conn:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "generations_newest_first" in indexes


async def test_reopening_applies_nothing_twice(sqlite_path: Path) -> None:
    for _ in range(2):
        store = await SqliteStore.open(sqlite_path)
        await store.close()
    assert _sqlite_versions(sqlite_path) == [m.version for m in MIGRATIONS]


async def test_sqlite_newer_schema_is_opened_with_a_warning(
    sqlite_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await (await SqliteStore.open(sqlite_path)).close()
    with sqlite3.connect(sqlite_path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, 'from the future', '2030-01-01')")
    with caplog.at_level(logging.WARNING, logger="openfusion.activity"):
        store = await SqliteStore.open(sqlite_path)
        await store.close()
    assert "schema version 99" in caplog.text


async def test_postgres_migrates_a_fresh_schema(postgres_url: str) -> None:
    store = await PostgresStore.open(postgres_url)
    try:
        assert await store.schema_version() == latest_version()
    finally:
        await store.close()
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        cursor = await conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        tables = {row[0] for row in await cursor.fetchall()}
        cursor = await conn.execute("SELECT version FROM schema_version ORDER BY version")
        versions = [row[0] for row in await cursor.fetchall()]
    assert tables == EXPECTED_TABLES
    assert versions == [m.version for m in MIGRATIONS]


async def test_postgres_upgrades_an_older_schema(postgres_url: str) -> None:
    old = await PostgresStore.open(postgres_url, migrations=MIGRATIONS[:1])
    assert await old.schema_version() == 1
    await old.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(V1_ROW, V1_VALUES)
    store = await PostgresStore.open(postgres_url)
    try:
        assert await store.schema_version() == latest_version()
        entry = await store.get("gen-old")
        assert entry is not None and entry.generation.api_type == "completions"
    finally:
        await store.close()


async def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:
    stores = await asyncio.gather(*(PostgresStore.open(postgres_url) for _ in range(4)))
    try:
        await stores[0].write([make_entry("gen-shared")])
        assert await stores[3].get("gen-shared") is not None  # one shared history
        assert {await s.schema_version() for s in stores} == {latest_version()}
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_two_processes_opening_one_sqlite_file_together(sqlite_path: Path) -> None:
    stores = await asyncio.gather(*(SqliteStore.open(sqlite_path) for _ in range(3)))
    await asyncio.gather(*(s.close() for s in stores))
    assert _sqlite_versions(sqlite_path) == [m.version for m in MIGRATIONS]


def test_pending_refuses_unordered_steps() -> None:
    assert [m.version for m in pending(1)] == [m.version for m in MIGRATIONS[1:]]
    with pytest.raises(ValueError, match="increasing"):
        pending(0, (MIGRATIONS[1], MIGRATIONS[0]))


async def test_round_trip_with_content(store: ActivityStore) -> None:
    entry = make_entry("gen-rt", content=True, cost=0.0581, trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
    await store.write([entry])
    loaded = await store.get("gen-rt")
    assert loaded == entry  # every field, the calls in their order, the content, the exact timestamp
    assert loaded is not None and loaded.generation.created_at == T0


async def test_round_trip_metadata_only_and_unknown_cost(store: ActivityStore) -> None:
    entry = make_entry("gen-meta", cost=None, calls=())
    await store.write([entry])
    loaded = await store.get("gen-meta")
    assert loaded is not None
    assert loaded.generation.cost is None  # unknown stays unknown, not 0
    assert loaded.generation.trace_id is None  # recorded without tracing
    assert not loaded.generation.has_content
    assert loaded.calls == ()


async def test_get_unknown_is_none(store: ActivityStore) -> None:
    assert await store.get("gen-nope") is None


async def test_writing_an_id_again_replaces_it(store: ActivityStore) -> None:
    await store.write([make_entry("gen-x")])
    again = make_entry("gen-x", status="error", failure_reason="all_panels_failed", calls=FUSION_CALLS[1:2])
    await store.write([again])
    loaded = await store.get("gen-x")
    assert loaded is not None
    assert loaded.generation.status == "error" and len(loaded.calls) == 1
    page = await store.list(limit=10)
    assert [g.id for g in page.generations] == ["gen-x"]


async def test_an_id_twice_in_one_batch_is_written_once_the_last_copy(store: ActivityStore) -> None:
    first, last = make_entry("gen-x"), make_entry("gen-x", status="error", calls=FUSION_CALLS[:1])
    await store.write([first, make_entry("gen-y"), last])
    loaded = await store.get("gen-x")
    assert loaded is not None and loaded.generation.status == "error" and len(loaded.calls) == 1
    assert sorted(g.id for g in (await store.list(limit=10)).generations) == ["gen-x", "gen-y"]


async def test_a_batch_past_the_statement_parameter_limit_round_trips(store: ActivityStore) -> None:
    # 300 generations with their calls need several multi-row statements (at most 999 parameters each).
    entries = entries_over_time(300)
    await store.write(entries)
    for entry in (entries[0], entries[150], entries[-1]):
        loaded = await store.get(entry.generation.id)
        assert loaded is not None
        assert loaded.generation == entry.generation
        assert loaded.calls == entry.calls
    page = await store.list(limit=500)
    assert len(page.generations) == 300


def test_batches_of_every_size_take_a_few_statement_texts() -> None:
    # Each text is a statement the connection compiles and caches (sqlite3: 128 per connection, the largest
    # ~100 KiB): one text per batch size filled that cache, and the process's memory, over a long run.
    entries = entries_over_time(300)
    texts: set[str] = set()
    written = 0
    for size in range(1, 301):
        statements = SQL.write_batch(entries[:size], _generation_row)
        texts |= {text for text, _ in statements}
        written = sum(len(params) for text, params in statements if text.startswith("INSERT INTO generations"))
        assert written == size * len(GENERATION_COLUMNS)
    assert len(texts) <= 90


async def test_list_is_newest_first_without_content(store: ActivityStore) -> None:
    await store.write(
        [
            make_entry("gen-old", created_at=T0, content=True),
            make_entry("gen-new", created_at=T0 + timedelta(minutes=1), content=True),
        ]
    )
    page = await store.list(limit=10)
    assert [g.id for g in page.generations] == ["gen-new", "gen-old"]
    assert not page.has_more and page.next_before is None
    assert all(not g.has_content for g in page.generations)


async def test_pagination_walks_every_generation_once(store: ActivityStore) -> None:
    entries = entries_over_time(7)
    # Two generations in the same microsecond: the id breaks the tie, so none is skipped or repeated.
    entries.append(make_entry("gen-003b", created_at=entries[3].generation.created_at))
    await store.write(entries)
    seen: list[str] = []
    before = None
    pages = 0
    while True:
        page = await store.list(limit=3, before=before)
        pages += 1
        seen += [g.id for g in page.generations]
        if not page.has_more:
            break
        before = page.next_before
        assert before == page.generations[-1].id
    expected = sorted((e.generation for e in entries), key=lambda g: (g.created_at, g.id), reverse=True)
    assert seen == [g.id for g in expected]
    assert pages == 3


async def test_unknown_cursor_is_refused(store: ActivityStore) -> None:
    await store.write([make_entry("gen-1")])
    with pytest.raises(UnknownCursor):
        await store.list(limit=5, before="gen-missing")


async def test_a_batch_is_one_transaction(store: ActivityStore) -> None:
    good = make_entry("gen-good")
    broken = make_entry("gen-broken", content=True, final_answer="PRIVATE-ANSWER")
    # model_copy skips validation: a status the schema's CHECK constraint refuses makes the database fail.
    invalid = ActivityEntry(broken.generation.model_copy(update={"status": "bogus"}), broken.calls)
    with pytest.raises(StoreUnavailable) as caught:
        await store.write([good, invalid])
    assert "PRIVATE-ANSWER" not in str(caught.value)  # an error never quotes stored content
    assert await store.get("gen-good") is None  # rolled back with the failing entry
    await store.write([good])  # and the store still works
    assert await store.get("gen-good") == good


async def test_nul_and_lone_surrogates_are_stored_alike_in_both_stores(store: ActivityStore) -> None:
    odd = "a\x00b\ud800c"  # PostgreSQL text refuses NUL; neither database can encode a lone surrogate
    entry = make_entry(
        "gen-odd",
        model=odd,
        failure_reason=odd,
        final_answer=odd,
        panel_answers=[PanelText(model="fake/a", content=odd)],
        analysis={"consensus": [odd]},
        calls=({**FUSION_CALLS[1], "error": odd},),
    )
    plain = make_entry("gen-plain-nul", final_answer="plain\x00text", calls=({**FUSION_CALLS[1], "error": "e\x00"},))
    await store.write([make_entry("gen-before"), entry, plain, make_entry("gen-after")])
    loaded_plain = await store.get("gen-plain-nul")  # ASCII text: its NUL is found without the pattern's scan
    assert loaded_plain is not None
    assert loaded_plain.generation.final_answer == "plain\ufffdtext" and loaded_plain.calls[0].error == "e\ufffd"
    loaded = await store.get("gen-odd")
    assert loaded is not None
    replaced = "a\ufffdb\ufffdc"
    assert loaded.generation.model == loaded.generation.failure_reason == loaded.generation.final_answer == replaced
    assert loaded.calls[0].error == replaced
    # JSON columns keep NUL (escaped as \u0000 in the text); only the surrogate, which JSON cannot carry, is replaced.
    assert loaded.generation.panel_answers == [PanelText(model="fake/a", content="a\x00b\ufffdc")]
    assert loaded.generation.analysis == {"consensus": ["a\x00b\ufffdc"]}
    assert await store.get("gen-before") is not None and await store.get("gen-after") is not None


async def test_ping_and_closed_store(store: ActivityStore) -> None:
    await store.ping()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.ping()


async def test_open_store_picks_sqlite_at_the_configured_path(sqlite_path: Path) -> None:
    store = await open_store(ActivitySettings(path=sqlite_path), environ={})
    try:
        assert isinstance(store, SqliteStore) and store.path == sqlite_path
    finally:
        await store.close()


async def test_open_store_defaults_under_xdg_state_home(tmp_path: Path) -> None:
    store = await open_store(ActivitySettings(), environ={"XDG_STATE_HOME": str(tmp_path)})
    try:
        assert isinstance(store, SqliteStore)
        assert store.path == tmp_path / "openfusion" / "activity.sqlite3"
    finally:
        await store.close()


async def test_open_store_picks_postgres_from_database_url(postgres_url: str, sqlite_path: Path) -> None:
    store = await open_store(ActivitySettings(path=sqlite_path), environ={"DATABASE_URL": postgres_url})
    try:
        assert isinstance(store, PostgresStore)
        await store.write([make_entry("gen-pg")])
        assert await store.get("gen-pg") is not None
    finally:
        await store.close()
    assert not _is_file(sqlite_path)


async def test_open_store_refuses_other_schemes_without_echoing_the_url() -> None:
    with pytest.raises(ConfigError) as caught:
        await open_store(ActivitySettings(), environ={"DATABASE_URL": "mysql://admin:hunter2@db/app"})
    assert "hunter2" not in str(caught.value) and "'mysql'" in str(caught.value)


async def test_unreachable_postgres_is_store_unavailable_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Port 1 on loopback: nothing listens, so the connection is refused at once.
    url = "postgresql://app:hunter2@127.0.0.1:1/activity"
    with pytest.raises(StoreUnavailable) as caught:
        await PostgresStore.open(url, timeout_s=1.0)
    assert "hunter2" not in str(caught.value)
    assert "127.0.0.1:1/activity" in str(caught.value)
    assert "hunter2" not in caplog.text


async def test_spent_today_sums_known_costs_per_key(store: ActivityStore) -> None:
    from openfusion.activity.records import GenerationRecord, utc_now

    def generation(gid: str, *, key: str | None, cost: float | None, days_ago: int = 0) -> ActivityEntry:
        record = GenerationRecord(
            id=gid, created_at=utc_now() - timedelta(days=days_ago), requested_model="fusion", status="ok",
            latency_ms=5, cost=cost, key_name=key,
        )  # fmt: skip
        return ActivityEntry(record)

    await store.write([
        generation("g1", key="team-a", cost=0.25),
        generation("g2", key="team-a", cost=None),  # unknown: left out, never counted as 0 or -1
        generation("g3", key="team-b", cost=1.0),
        generation("g4", key="team-a", cost=5.0, days_ago=1),  # yesterday's spend does not count
    ])  # fmt: skip

    assert await store.spent_today("team-a") == pytest.approx(0.25)
    assert await store.spent_today("team-b") == pytest.approx(1.0)
    assert await store.spent_today(None) == pytest.approx(1.25)
    assert await store.spent_today("nobody") == 0.0


def _stored(response_id: str, *, owner: str, created: datetime, days: float = 1.0) -> StoredResponse:
    items = [{"type": "message", "role": "user", "content": "Hi"}]
    response = {"id": response_id, "output": [{"type": "message", "role": "assistant", "content": []}]}
    return StoredResponse(response_id, owner, "gen-1", created, created + timedelta(days=days), items, response)


async def test_stored_responses_are_found_by_their_owner_until_they_expire(store: ActivityStore) -> None:
    assert isinstance(store, ResponseStore)
    await store.save_response(_stored("resp_a", owner="alice", created=T0))
    await store.save_response(_stored("resp_open", owner="", created=T0))

    found = await store.load_response("resp_a", owner="alice", now=T0 + timedelta(hours=1))
    assert found is not None and found.items[0]["content"] == "Hi" and found.response["id"] == "resp_a"
    assert found.expires_at == T0 + timedelta(days=1) and found.generation_id == "gen-1"
    assert await store.load_response("resp_a", owner="bob", now=T0) is None  # another key's: not there
    assert await store.load_response("resp_a", owner="", now=T0) is None  # nor for a server without keys
    assert await store.load_response("resp_open", owner="", now=T0) is not None
    assert await store.load_response("resp_a", owner="alice", now=T0 + timedelta(days=1)) is None  # expired

    assert await store.purge_responses(now=T0 + timedelta(days=2), created_before=T0 - timedelta(days=1)) == 2
    assert await store.load_response("resp_open", owner="", now=T0) is None


async def test_two_owners_each_keep_their_own_response_of_one_id(store: ActivityStore) -> None:
    """A pass-through response's id is the provider's: two keys may be given the same one."""
    assert isinstance(store, ResponseStore)
    for owner in ("alice", "bob"):
        stored = _stored("resp_same", owner=owner, created=T0)
        await store.save_response(StoredResponse(**{**vars(stored), "items": [{"role": "user", "content": owner}]}))

    for owner in ("alice", "bob"):
        found = await store.load_response("resp_same", owner=owner, now=T0)
        assert found is not None and found.owner == owner and found.items == [{"role": "user", "content": owner}]
    assert await store.purge_responses(now=T0 + timedelta(days=2), created_before=T0 - timedelta(days=1)) == 2


async def test_an_owners_response_of_an_id_it_kept_before_takes_its_place(store: ActivityStore) -> None:
    """A provider that gives one key an id twice: the newer response is the one a follow-up continues."""
    assert isinstance(store, ResponseStore)
    await store.save_response(_stored("resp_same", owner="alice", created=T0))
    newer = _stored("resp_same", owner="alice", created=T0 + timedelta(hours=1), days=2)
    await store.save_response(StoredResponse(**{**vars(newer), "items": [{"role": "user", "content": "Again"}]}))

    found = await store.load_response("resp_same", owner="alice", now=T0 + timedelta(days=1, hours=2))
    assert found is not None and found.items == [{"role": "user", "content": "Again"}]
    assert found.created_at == T0 + timedelta(hours=1) and found.expires_at == T0 + timedelta(days=2, hours=1)


# The schema before stored responses were keyed by their owner too, and a row as it kept one.
_BY_ID_ONLY = MIGRATIONS[: [m.version for m in MIGRATIONS].index(10)]
_V9_STORED = (
    "INSERT INTO stored_responses (id, owner, generation_id, created_at, expires_at, items, response) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s)"
)


async def _upgrade_keeps_stored_responses(store: Any) -> None:
    try:
        assert await store.schema_version() == latest_version()
        kept = await store.load_response("resp_old", owner="alice", now=T0)
        assert kept is not None and kept.items[0]["content"] == "Hi" and kept.expires_at == T0 + timedelta(days=30)
        await store.save_response(_stored("resp_old", owner="bob", created=T0))  # refused under the old key
        assert await store.load_response("resp_old", owner="bob", now=T0) is not None
        assert await store.purge_responses(now=T0 + timedelta(days=31), created_before=T0 - timedelta(days=1)) == 2
    finally:
        await store.close()


async def test_sqlite_upgrade_keys_stored_responses_by_owner_and_keeps_them(sqlite_path: Path) -> None:
    await (await SqliteStore.open(sqlite_path, migrations=_BY_ID_ONLY)).close()
    with sqlite3.connect(sqlite_path) as conn:
        row = stored_values(_stored("resp_old", owner="alice", created=T0, days=30), stamp=timestamp)
        conn.execute(_V9_STORED.replace("%s", "?"), row)

    await _upgrade_keeps_stored_responses(await SqliteStore.open(sqlite_path))
    with sqlite3.connect(sqlite_path) as conn:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'stored_responses'")}
    assert "stored_responses_expiry" in indexes and _sqlite_tables(sqlite_path) == EXPECTED_TABLES


async def test_postgres_upgrade_keys_stored_responses_by_owner_and_keeps_them(postgres_url: str) -> None:
    await (await PostgresStore.open(postgres_url, migrations=_BY_ID_ONLY)).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(_V9_STORED, stored_values(_stored("resp_old", owner="alice", created=T0, days=30)))

    await _upgrade_keeps_stored_responses(await PostgresStore.open(postgres_url))
    with psycopg.connect(postgres_url) as conn:
        key = conn.execute(
            "SELECT a.attname FROM pg_index i"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
            " WHERE i.indrelid = 'stored_responses'::regclass AND i.indisprimary"
            " ORDER BY array_position(i.indkey::smallint[], a.attnum)"
        ).fetchall()
    assert [row[0] for row in key] == ["owner", "id"]


async def test_a_purge_deletes_what_a_lowered_retention_no_longer_keeps(store: ActivityStore) -> None:
    """Kept for 30 days when stored, but the retention is now one hour: gone, though not yet expired."""
    assert isinstance(store, ResponseStore)
    await store.save_response(_stored("resp_old", owner="alice", created=T0, days=30))
    await store.save_response(_stored("resp_new", owner="alice", created=T0 + timedelta(hours=2), days=30))

    now = T0 + timedelta(hours=2, minutes=30)
    assert await store.purge_responses(now=now, created_before=now - timedelta(hours=1)) == 1
    assert await store.load_response("resp_old", owner="alice", now=now) is None
    assert await store.load_response("resp_new", owner="alice", now=now) is not None


async def test_one_keys_generations_are_read_in_the_query(store: ActivityStore) -> None:
    keys = ["team-a", "team-b", None, "team-a", "team-b", "team-a", "team-a"]
    entries = [
        make_entry(f"gen-{i}", created_at=T0 + timedelta(seconds=i), key_name=key, content=True)
        for i, key in enumerate(keys)
    ]
    await store.write(entries)
    mine = [e.generation.id for e in reversed(entries) if e.generation.key_name == "team-a"]
    seen: list[str] = []
    before = None
    while True:
        page = await store.list(limit=3, before=before, key_name="team-a")
        seen += [g.id for g in page.generations]
        if not page.has_more:
            break
        before = page.next_before
    assert seen == mine
    assert [g.id for g in (await store.list(limit=10)).generations] == [e.generation.id for e in reversed(entries)]
    # Another key's generation, fetched or used as a cursor, is as missing as one that never existed.
    assert await store.get("gen-1", key_name="team-a") is None
    assert await store.get("gen-2", key_name="team-a") is None  # recorded without a key: not team-a's either
    entry = await store.get("gen-0", key_name="team-a")
    assert entry is not None and entry.generation.final_answer and entry.calls
    assert (await store.get("gen-1")) is not None
    with pytest.raises(UnknownCursor):
        await store.list(limit=5, before="gen-1", key_name="team-a")


async def test_a_keys_activity_and_spend_are_read_through_one_index(
    sqlite_store: SqliteStore, sqlite_path: Path
) -> None:
    from openfusion.activity.sqlite_store import SQL

    await sqlite_store.write(entries_over_time(3))
    conn = sqlite3.connect(sqlite_path)  # the store's own statements, planned on its file
    for statement, params in (
        SQL.page(3, "team-a", None),
        SQL.page(3, "team-a", ("2026-11-01T12:00:00.000000+00:00", "gen-9")),
        (SQL.spent_by_key_since, ("2026-11-01T00:00:00.000000+00:00", "team-a")),
    ):
        plan = " ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", params))
        assert "USING INDEX generations_by_key" in plan or "USING COVERING INDEX generations_by_key" in plan, plan
        assert "TEMP B-TREE" not in plan, plan  # newest first straight from the index, no sort
    conn.close()


async def test_postgres_reads_a_keys_page_through_its_index(postgres_url: str) -> None:
    from openfusion.activity.postgres_store import SQL

    store = await PostgresStore.open(postgres_url)
    try:
        await store.write(entries_over_time(3))
        async with store._connection() as conn:
            await conn.execute("SET enable_seqscan = off")  # a few rows: make the planner show its index choice
            statement, params = SQL.page(3, "team-a", None)
            rows = await (await conn.execute(f"EXPLAIN {statement}", params)).fetchall()
        plan = " ".join(row[0] for row in rows)
        assert "generations_by_key" in plan and "Sort" not in plan, plan
    finally:
        await store.close()


_ODD_TEXT = st.text(alphabet=st.sampled_from("a\x00\ud800\udfff\ue000é\x7f"))  # NUL, surrogates and their neighbours


@given(st.one_of(st.text(), st.text(alphabet=st.characters(max_codepoint=127)), _ODD_TEXT, st.none(), st.integers()))
def test_storable_replaces_exactly_what_the_pattern_finds(value: object) -> None:
    """The ASCII shortcut in `storable` gives what the pattern alone gives, for any text."""
    expected = _UNSTORABLE.sub("\ufffd", value) if isinstance(value, str) else value
    assert storable(value) == expected
