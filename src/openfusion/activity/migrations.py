"""The versioned schema: ordered migration steps, each with its SQLite and PostgreSQL statements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from openfusion.activity.cached import CACHE_EVICTION_INDEX, CACHE_EXPIRY_INDEX, result_cache_table
from openfusion.activity.stored import EXPIRY_INDEX, STORED_COLUMNS, STORED_TABLE, stored_responses_table

Dialect = Literal["sqlite", "postgres"]

# Applied versions are recorded here; a store applies every newer step, in order, when it opens.
VERSION_TABLE = "schema_version"


@dataclass(frozen=True)
class Migration:
    """One schema step. Steps are append-only: never edit a released one, add the next."""

    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]

    def statements(self, dialect: Dialect) -> tuple[str, ...]:
        """The statements of this step for one database."""
        return self.sqlite if dialect == "sqlite" else self.postgres


def _generations(*, timestamp: str, integer: str, real: str, boolean: str) -> str:
    return f"""
CREATE TABLE generations (
    id TEXT PRIMARY KEY,
    created_at {timestamp} NOT NULL,
    requested_model TEXT NOT NULL,
    model TEXT,
    preset TEXT,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'cancelled')),
    failure_reason TEXT,
    finish_reason TEXT,
    latency_ms {integer} NOT NULL,
    prompt_tokens {integer} NOT NULL DEFAULT 0,
    completion_tokens {integer} NOT NULL DEFAULT 0,
    total_tokens {integer} NOT NULL DEFAULT 0,
    cost {real},
    streamed {boolean} NOT NULL,
    key_name TEXT,
    panel_answers TEXT,
    analysis TEXT,
    final_answer TEXT
)"""


def _calls(*, integer: str, real: str) -> str:
    return f"""
CREATE TABLE calls (
    generation_id TEXT NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'cancelled')),
    prompt_tokens {integer} NOT NULL DEFAULT 0,
    completion_tokens {integer} NOT NULL DEFAULT 0,
    cost {real},
    latency_ms {integer} NOT NULL,
    started_ms {integer} NOT NULL DEFAULT 0,
    error TEXT,
    upstream_status INTEGER,
    retries INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (generation_id, position)
)"""


def _stored_responses_by_id(*, timestamp: str) -> str:
    """Stored responses as version 5 made them: keyed by their id alone."""
    return f"""
CREATE TABLE {STORED_TABLE} (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    generation_id TEXT NOT NULL,
    created_at {timestamp} NOT NULL,
    expires_at {timestamp} NOT NULL,
    items TEXT NOT NULL,
    response TEXT NOT NULL
)"""


# SQLite cannot change a table's primary key: the rows move to a new table, which takes the old one's name (and the
# expiry index, dropped with the old table, is made again). PostgreSQL changes the key in place.
_NEW_STORED = f"{STORED_TABLE}_by_owner"
_STORED_BY_OWNER_SQLITE = (
    stored_responses_table(timestamp="TEXT", name=_NEW_STORED),
    f"INSERT INTO {_NEW_STORED} ({', '.join(STORED_COLUMNS)}) SELECT {', '.join(STORED_COLUMNS)} FROM {STORED_TABLE}",
    f"DROP TABLE {STORED_TABLE}",
    f"ALTER TABLE {_NEW_STORED} RENAME TO {STORED_TABLE}",
    EXPIRY_INDEX,
)
_STORED_BY_OWNER_POSTGRES = (
    f"ALTER TABLE {STORED_TABLE} DROP CONSTRAINT {STORED_TABLE}_pkey, ADD PRIMARY KEY (owner, id)",
)

_SPEND_INDEX = "CREATE INDEX generations_spend ON generations (key_name, created_at)"
# Every generation before this step came through Chat Completions.
_API_TYPE = "ALTER TABLE generations ADD COLUMN api_type TEXT NOT NULL DEFAULT 'completions'"
_STATUS_CODE = "ALTER TABLE generations ADD COLUMN status_code INTEGER"
_TRACE_ID = "ALTER TABLE generations ADD COLUMN trace_id TEXT"
# One key's activity newest first (and its spend today): serves both, so the spend-only index goes.
_BY_KEY_INDEX = "CREATE INDEX generations_by_key ON generations (key_name, created_at DESC, id DESC)"
_DROP_SPEND_INDEX = "DROP INDEX IF EXISTS generations_spend"
_PAGINATION_INDEX = "CREATE INDEX generations_newest_first ON generations (created_at DESC, id DESC)"
# A generation answered from the result cache, and what its original run cost.
_CACHE_HIT = "ALTER TABLE generations ADD COLUMN cache_hit {boolean} NOT NULL DEFAULT {false}"
_COST_SAVED = "ALTER TABLE generations ADD COLUMN cost_saved {real}"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="generations and their upstream calls",
        sqlite=(
            _generations(timestamp="TEXT", integer="INTEGER", real="REAL", boolean="INTEGER"),
            _calls(integer="INTEGER", real="REAL"),
        ),
        postgres=(
            _generations(timestamp="TIMESTAMPTZ", integer="BIGINT", real="DOUBLE PRECISION", boolean="BOOLEAN"),
            _calls(integer="BIGINT", real="DOUBLE PRECISION"),
        ),
    ),
    Migration(
        version=2,
        description="index for newest-first pagination",
        sqlite=(_PAGINATION_INDEX,),
        postgres=(_PAGINATION_INDEX,),
    ),
    Migration(
        version=3,
        description="index for a key's spend today (daily spend caps)",
        sqlite=(_SPEND_INDEX,),
        postgres=(_SPEND_INDEX,),
    ),
    Migration(
        version=4,
        description="the API surface a generation came through (api_type)",
        sqlite=(_API_TYPE,),
        postgres=(_API_TYPE,),
    ),
    Migration(
        version=5,
        description="stored responses, for the Responses API's previous_response_id",
        sqlite=(_stored_responses_by_id(timestamp="TEXT"), EXPIRY_INDEX),
        postgres=(_stored_responses_by_id(timestamp="TIMESTAMPTZ"), EXPIRY_INDEX),
    ),
    Migration(
        version=6,
        description="index for one key's activity, newest first (and its spend today)",
        sqlite=(_BY_KEY_INDEX, _DROP_SPEND_INDEX),
        postgres=(_BY_KEY_INDEX, _DROP_SPEND_INDEX),
    ),
    Migration(
        version=7,
        description="the HTTP status a generation was answered with (status_code)",
        sqlite=(_STATUS_CODE,),
        postgres=(_STATUS_CODE,),
    ),
    Migration(
        version=8,
        description="the result cache, and generations answered from it (cache_hit, cost_saved)",
        sqlite=(
            _CACHE_HIT.format(boolean="INTEGER", false="0"),
            _COST_SAVED.format(real="REAL"),
            result_cache_table(blob="BLOB", real="REAL", integer="INTEGER"),
            CACHE_EXPIRY_INDEX,
            CACHE_EVICTION_INDEX,
        ),
        postgres=(
            _CACHE_HIT.format(boolean="BOOLEAN", false="FALSE"),
            _COST_SAVED.format(real="DOUBLE PRECISION"),
            result_cache_table(blob="BYTEA", real="DOUBLE PRECISION", integer="BIGINT"),
            CACHE_EXPIRY_INDEX,
            CACHE_EVICTION_INDEX,
        ),
    ),
    Migration(
        version=9,
        description="the OpenTelemetry trace a generation was recorded in (trace_id)",
        sqlite=(_TRACE_ID,),
        postgres=(_TRACE_ID,),
    ),
    Migration(
        version=10,
        description="stored responses keyed by their owner and id (two keys may be given one id by a provider)",
        sqlite=_STORED_BY_OWNER_SQLITE,
        postgres=_STORED_BY_OWNER_POSTGRES,
    ),
)


def pending(current: int, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[Migration]:
    """The steps newer than `current`, in order."""
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError("migration versions must be unique and increasing")
    return [m for m in migrations if m.version > current]


def latest_version(migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """The schema version the code expects."""
    return migrations[-1].version if migrations else 0
