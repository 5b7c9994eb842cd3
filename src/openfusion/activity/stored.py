"""Stored responses: what a Responses API follow-up (`previous_response_id`) continues from.

Each row belongs to the client key that created it (its name; "" on a server without keys) and is
found only by that key, until it expires. It keeps the conversation as Responses input items (the
history it continued, its own input, its output) and the response object.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import orjson

STORED_TABLE = "stored_responses"


def stored_responses_table(*, timestamp: str, name: str = STORED_TABLE) -> str:
    """The table, for one database's timestamp type.

    A response is keyed by its owner and its id: a pass-through response's id is the provider's, and two keys given
    the same one each keep their own.
    """
    return f"""
CREATE TABLE {name} (
    id TEXT NOT NULL,
    owner TEXT NOT NULL,
    generation_id TEXT NOT NULL,
    created_at {timestamp} NOT NULL,
    expires_at {timestamp} NOT NULL,
    items TEXT NOT NULL,
    response TEXT NOT NULL,
    PRIMARY KEY (owner, id)
)"""


STORED_COLUMNS = ("id", "owner", "generation_id", "created_at", "expires_at", "items", "response")
EXPIRY_INDEX = f"CREATE INDEX stored_responses_expiry ON {STORED_TABLE} (expires_at)"


@dataclass(frozen=True)
class StoredResponse:
    """One stored response: its owner, the conversation items it ends, and the response object."""

    id: str
    owner: str  # the client key's name; "" without keys
    generation_id: str
    created_at: datetime
    expires_at: datetime
    items: list[dict[str, Any]]
    response: dict[str, Any]


@runtime_checkable
class ResponseStore(Protocol):
    """Where stored responses live (the activity store, SQLite or PostgreSQL)."""

    async def save_response(self, stored: StoredResponse) -> None:
        """Keep a response until it expires (in place of the owner's of that id); StoreUnavailable on a failure."""
        ...

    async def load_response(self, response_id: str, *, owner: str, now: datetime) -> StoredResponse | None:
        """The owner's unexpired response of that id, or None (another owner's is None too)."""
        ...

    async def purge_responses(self, *, now: datetime, created_before: datetime) -> int:
        """Delete the responses expired by `now` or created before `created_before`; how many."""
        ...


class StoredStatements:
    """The statements, for one placeholder style."""

    def __init__(self, p: str) -> None:
        columns = ", ".join(STORED_COLUMNS)
        # The owner's id again (a provider that reuses ids): the newer response is the one its follow-up continues.
        newer = ", ".join(f"{column} = excluded.{column}" for column in STORED_COLUMNS[2:])
        self.insert = (
            f"INSERT INTO {STORED_TABLE} ({columns}) VALUES ({', '.join([p] * 7)}) "
            f"ON CONFLICT (owner, id) DO UPDATE SET {newer}"
        )
        # The owner is part of the lookup: a key never sees, nor learns of, another key's responses.
        self.select = f"SELECT {columns} FROM {STORED_TABLE} WHERE id = {p} AND owner = {p} AND expires_at > {p}"
        # Expired, or kept longer than the retention now in force (it may have been lowered since).
        self.purge = f"DELETE FROM {STORED_TABLE} WHERE expires_at <= {p} OR created_at <= {p}"


def stored_values(stored: StoredResponse, *, stamp: Any = None) -> tuple[Any, ...]:
    """The row's values; `stamp` converts the timestamps (SQLite keeps text)."""
    convert = stamp or (lambda value: value)
    return (
        stored.id,
        stored.owner,
        stored.generation_id,
        convert(stored.created_at),
        convert(stored.expires_at),
        orjson.dumps(stored.items).decode(),
        orjson.dumps(stored.response).decode(),
    )


def stored_from_row(row: Any) -> StoredResponse:
    """A stored response from a row in the insert's column order."""
    created, expires = (datetime.fromisoformat(v) if isinstance(v, str) else v for v in (row[3], row[4]))
    return StoredResponse(
        id=row[0],
        owner=row[1],
        generation_id=row[2],
        created_at=created,
        expires_at=expires,
        items=orjson.loads(row[5]),
        response=orjson.loads(row[6]),
    )
