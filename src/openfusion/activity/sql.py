"""SQL shared by the SQLite and PostgreSQL stores: columns, statements, and record <-> row conversion."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from itertools import chain
from typing import Any

import orjson

from openfusion.activity.records import (
    ActivityEntry,
    ApiType,
    CallRecord,
    CallRole,
    CallStatus,
    EntryRows,
    GenerationRecord,
    GenerationStatus,
    PanelText,
    Tokens,
    Writable,
)

SUMMARY_COLUMNS = (
    "id",
    "created_at",
    "requested_model",
    "model",
    "preset",
    "status",
    "failure_reason",
    "finish_reason",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost",
    "streamed",
    "key_name",
    "api_type",
    "status_code",
    "cache_hit",
    "cost_saved",
    "trace_id",
)
CONTENT_COLUMNS = ("panel_answers", "analysis", "final_answer")
GENERATION_COLUMNS = SUMMARY_COLUMNS + CONTENT_COLUMNS
CALL_COLUMNS = (
    "generation_id",
    "position",
    "role",
    "model",
    "provider",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "latency_ms",
    "started_ms",
    "error",
    "upstream_status",
    "retries",
)


class Statements:
    """The store's statements for one placeholder style (`?` for sqlite3, `%s` for psycopg)."""

    def __init__(self, placeholder: str) -> None:
        p = placeholder
        self.placeholder = p
        self.select_generation = f"SELECT {', '.join(GENERATION_COLUMNS)} FROM generations WHERE id = {p}"
        self.select_calls = f"SELECT {', '.join(CALL_COLUMNS)} FROM calls WHERE generation_id = {p} ORDER BY position"
        self.select_cursor = f"SELECT created_at, id FROM generations WHERE id = {p}"
        summary = ", ".join(SUMMARY_COLUMNS)
        self.select_newest = f"SELECT {summary} FROM generations ORDER BY created_at DESC, id DESC LIMIT {p}"
        # Unknown costs are left out: a spend cap sees a lower bound rather than nothing.
        self.spent_since = f"SELECT COALESCE(SUM(cost), 0) FROM generations WHERE created_at >= {p}"
        self.spent_by_key_since = self.spent_since + f" AND key_name = {p}"
        self.select_older = (
            f"SELECT {summary} FROM generations WHERE (created_at, id) < ({p}, {p}) "
            f"ORDER BY created_at DESC, id DESC LIMIT {p}"
        )
        # One key's generations, in the query (on the generations_by_key index), never filtered after fetching.
        self._of_key = f" AND key_name = {p}"
        self._newest_of_key = (
            f"SELECT {summary} FROM generations WHERE key_name = {p} ORDER BY created_at DESC, id DESC LIMIT {p}"
        )
        self._older_of_key = (
            f"SELECT {summary} FROM generations WHERE key_name = {p} AND (created_at, id) < ({p}, {p}) "
            f"ORDER BY created_at DESC, id DESC LIMIT {p}"
        )

    def generation(self, generation_id: str, key_name: str | None) -> tuple[str, tuple[Any, ...]]:
        """The statement reading one generation; with `key_name`, only when that key made it."""
        if key_name is None:
            return self.select_generation, (generation_id,)
        return self.select_generation + self._of_key, (generation_id, key_name)

    def cursor(self, before: str, key_name: str | None) -> tuple[str, tuple[Any, ...]]:
        """The statement reading a page cursor's position; with `key_name`, only one of that key's generations."""
        if key_name is None:
            return self.select_cursor, (before,)
        return self.select_cursor + self._of_key, (before, key_name)

    def page(self, limit: int, key_name: str | None, after: Sequence[Any] | None) -> tuple[str, tuple[Any, ...]]:
        """The statement reading a page, newest first, older than the `after` (created_at, id) position if given."""
        if after is None:
            if key_name is None:
                return self.select_newest, (limit,)
            return self._newest_of_key, (key_name, limit)
        if key_name is None:
            return self.select_older, (after[0], after[1], limit)
        return self._older_of_key, (key_name, after[0], after[1], limit)

    def write_batch(
        self,
        batch: Sequence[Writable],
        generation_row: Callable[[tuple[Any, ...]], Sequence[Any]] | None = None,
    ) -> list[tuple[str, list[Any]]]:
        """The statements that write a batch, in order: a few multi-row statements, not four per generation.

        `generation_row`, when given, makes a generation's values (`EntryRows.generation`) the row the store
        binds; without it they are bound as they are. A store runs them in one transaction. A generation
        written again (a retried batch) replaces the earlier copy, its calls going with it (`ON DELETE
        CASCADE`); one that comes twice in a batch is written once, the last copy. Few statements matter:
        SQLite's thread re-takes the GIL after every statement, which under load is a wait each time, and
        PostgreSQL pays a round trip each.
        """
        latest = {entry.generation_id: entry_rows(entry) for entry in batch}
        rows = latest.values()
        ids = [values.generation[0] for values in rows]  # each the generation's id as stored (storable)
        statements: list[tuple[str, list[Any]]] = [
            (_delete_text(self.placeholder, len(chunk)), list(chunk)) for chunk in _chunks(ids, _MAX_PARAMETERS)
        ]
        if generation_row is None:
            generations: Sequence[Sequence[Any]] = [values.generation for values in rows]
        else:
            generations = [generation_row(values.generation) for values in rows]
        calls = list(chain.from_iterable(values.calls for values in rows))
        statements += self._inserts("generations", GENERATION_COLUMNS, generations)
        statements += self._inserts("calls", CALL_COLUMNS, calls)
        return statements

    def _inserts(
        self, table: str, columns: tuple[str, ...], rows: Sequence[Sequence[Any]]
    ) -> list[tuple[str, list[Any]]]:
        return [
            (_insert_text(self.placeholder, table, columns, len(chunk)), list(chain.from_iterable(chunk)))
            for chunk in _chunks(rows, _MAX_PARAMETERS // len(columns))
        ]


# A statement's text made once per length (`_chunks` keeps them few): per batch, building it again cost as much as
# the rest of the batch's Python work, and the same string object is then found in sqlite3's statement cache without
# hashing its text again.


@functools.lru_cache(maxsize=256)
def _delete_text(placeholder: str, count: int) -> str:
    """The statement deleting `count` generations by id; their calls go with them (`ON DELETE CASCADE`)."""
    return f"DELETE FROM generations WHERE id IN ({', '.join([placeholder] * count)})"


@functools.lru_cache(maxsize=256)
def _insert_text(placeholder: str, table: str, columns: tuple[str, ...], count: int) -> str:
    """The statement inserting `count` rows of `columns` into `table`."""
    row = "(" + ", ".join([placeholder] * len(columns)) + ")"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([row] * count)


# Bound parameters per statement: within the oldest SQLite limit (999); PostgreSQL allows 65,535.
_MAX_PARAMETERS = 999


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """`items` in chunks of `size`; a rest above `_EXACT` in chunks of decreasing powers of two, the last
    `_EXACT` or fewer as one chunk (100 by 43: 43, 43, 14; 40 by 71: 32, 8).

    A statement's text follows its chunk's length, and each text is a statement the connection compiles and
    keeps in its cache (sqlite3 keeps 128, each up to ~100 KiB for 999 parameters): with any length, batches of
    every size fill that cache over hours, and the process's memory with it. With these, a statement has at most
    `_EXACT` + log2(size) + 1 texts, each compiled once, and a small batch is still one statement per table.
    """
    chunks: list[Sequence[Any]] = []
    start, left = 0, len(items)
    while left:
        length = size if left >= size else left if left <= _EXACT else 1 << (left.bit_length() - 1)
        chunks.append(items[start : start + length])
        start += length
        left -= length
    return chunks


_EXACT = 16


# PostgreSQL text cannot hold NUL and UTF-8 cannot encode a lone surrogate: either would fail the whole
# batch it came in. Both stores keep them as U+FFFD (inside JSON columns NUL stays, escaped as \u0000).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value: Any) -> Any:
    """`value`, with NUL and lone surrogates replaced by U+FFFD when it is a string."""
    if not isinstance(value, str):
        return value
    if value.isascii():  # known without a scan; no surrogate in it, and `in` finds a NUL at memchr's speed
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if _UNSTORABLE.search(value):
        return _UNSTORABLE.sub("\ufffd", value)
    return value


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # a lone surrogate inside: orjson will not encode it, json.dumps keeps it
        return str(storable(json.dumps(value, ensure_ascii=False)))


def storable_values(values: Iterable[Any]) -> tuple[Any, ...]:
    """`values`, each string made `storable` (the rest, numbers and NULLs, taken as they are, without a call)."""
    return tuple([storable(value) if isinstance(value, str) else value for value in values])


def generation_values(record: GenerationRecord) -> tuple[Any, ...]:
    """A record as values in GENERATION_COLUMNS order (created_at stays a datetime), every string storable."""
    panels = record.panel_answers
    usage = record.usage
    # Every string made storable, the id included: a record made by hand may hold any text where a request's own
    # values (`generation_row_values`' callers) hold the server's.
    return storable_values(
        generation_row_values(
            id=record.id,
            created_at=record.created_at,
            requested_model=record.requested_model,
            model=record.model,
            preset=record.preset,
            status=record.status,
            failure_reason=record.failure_reason,
            finish_reason=record.finish_reason,
            latency_ms=record.latency_ms,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            cost=record.cost,
            streamed=record.streamed,
            key_name=record.key_name,
            api_type=record.api_type,
            status_code=record.status_code,
            cache_hit=record.cache_hit,
            cost_saved=record.cost_saved,
            trace_id=record.trace_id,
            panel_answers=None if panels is None else [(p.model, p.content) for p in panels],
            analysis=record.analysis,
            final_answer=record.final_answer,
        )
    )


def generation_row_values(
    *,
    id: str,
    created_at: datetime,
    requested_model: str,
    model: str | None,
    preset: str | None,
    status: GenerationStatus,
    failure_reason: str | None,
    finish_reason: str | None,
    latency_ms: int,
    prompt_tokens: int,
    completion_tokens: int,
    total_tokens: int,
    cost: float | None,
    streamed: bool,
    key_name: str | None,
    api_type: ApiType,
    status_code: int | None,
    cache_hit: bool,
    cost_saved: float | None,
    trace_id: str | None,
    panel_answers: Sequence[tuple[str, str]] | None = None,
    analysis: dict[str, Any] | None = None,
    final_answer: str | None = None,
) -> tuple[Any, ...]:
    """A generation's values in GENERATION_COLUMNS order: a `GenerationRecord`'s fields (its `usage` as its three
    counts, `panel_answers` as (model, content) pairs), made into values without the record.

    Every string is storable that may hold text from outside (names, reasons, content); `id`, `status`, `api_type`
    and `trace_id` are taken as they are: the server's own (its ids, its literals, hex digits), or made storable by
    the caller (`generation_values`). The JSON columns are storable as made (`_json_text`).
    """
    panel = None if panel_answers is None else _json_text([{"model": m, "content": c} for m, c in panel_answers])
    return (
        id,
        created_at,
        storable(requested_model),
        storable(model),
        storable(preset),
        status,
        storable(failure_reason),
        storable(finish_reason),
        latency_ms,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        cost,
        streamed,
        storable(key_name),
        api_type,
        status_code,
        cache_hit,
        cost_saved,
        trace_id,
        panel,
        _json_text(analysis) if analysis is not None else None,
        storable(final_answer),
    )


def entry_rows(entry: Writable) -> EntryRows:
    """An entry as the rows a store writes (rows made straight from a request are taken as they are)."""
    if isinstance(entry, EntryRows):
        return entry
    calls = tuple([call_values(call, position) for position, call in enumerate(entry.calls)])
    return EntryRows(entry.generation.id, generation_values(entry.generation), calls)


def without_content(entry: Writable) -> Writable:
    """The entry with its content fields cleared (metadata only); the same entry when it holds none."""
    if isinstance(entry, ActivityEntry):
        generation = entry.generation
        return ActivityEntry(generation.without_content(), entry.calls) if generation.has_content else entry
    values = entry.generation
    if values[_CONTENT_START:] == _NO_CONTENT:
        return entry
    return EntryRows(entry.generation_id, values[:_CONTENT_START] + _NO_CONTENT, entry.calls)


_CONTENT_START = len(SUMMARY_COLUMNS)  # the content columns come last
_NO_CONTENT = (None,) * len(CONTENT_COLUMNS)


def generation_from_row(row: Sequence[Any]) -> GenerationRecord:
    """A record from a row in SUMMARY_COLUMNS or GENERATION_COLUMNS order."""
    values = dict(zip(GENERATION_COLUMNS, row, strict=False))
    panel = values.get("panel_answers")
    analysis = values.get("analysis")
    return GenerationRecord(
        id=values["id"],
        created_at=values["created_at"],
        requested_model=values["requested_model"],
        model=values["model"],
        preset=values["preset"],
        status=values["status"],
        failure_reason=values["failure_reason"],
        finish_reason=values["finish_reason"],
        latency_ms=values["latency_ms"],
        usage=Tokens(
            prompt_tokens=values["prompt_tokens"],
            completion_tokens=values["completion_tokens"],
            total_tokens=values["total_tokens"],
        ),
        cost=values["cost"],
        streamed=bool(values["streamed"]),
        key_name=values["key_name"],
        api_type=values["api_type"],
        status_code=values["status_code"],
        cache_hit=bool(values["cache_hit"]),
        cost_saved=values["cost_saved"],
        trace_id=values["trace_id"],
        panel_answers=[PanelText(**p) for p in orjson.loads(panel)] if panel is not None else None,
        analysis=orjson.loads(analysis) if analysis is not None else None,
        final_answer=values.get("final_answer"),
    )


def call_values(call: CallRecord, position: int) -> tuple[Any, ...]:
    """A call as values in CALL_COLUMNS order, every string storable; `position` keeps the order the calls were
    recorded in."""
    return storable_values(
        call_row_values(
            generation_id=call.generation_id,
            position=position,
            role=call.role,
            model=call.model,
            provider=call.provider,
            status=call.status,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
            cost=call.cost,
            latency_ms=call.latency_ms,
            started_ms=call.started_ms,
            error=call.error,
            upstream_status=call.upstream_status,
            retries=call.retries,
        )
    )


def call_row_values(
    *,
    generation_id: str,
    position: int,
    role: CallRole,
    model: str,
    provider: str | None,
    status: CallStatus,
    prompt_tokens: int,
    completion_tokens: int,
    cost: float | None,
    latency_ms: int,
    started_ms: int,
    error: str | None,
    upstream_status: int | None,
    retries: int,
) -> tuple[Any, ...]:
    """A call's values in CALL_COLUMNS order: a `CallRecord`'s fields, and its `position` among its generation's
    calls, made into values without the record.

    `model`, `provider` and `error` are made storable; `generation_id` (the generation's, as its row holds it),
    `role` and `status` (literals) are taken as they are.
    """
    return (
        generation_id,
        position,
        role,
        storable(model),
        storable(provider),
        status,
        prompt_tokens,
        completion_tokens,
        cost,
        latency_ms,
        started_ms,
        storable(error),
        upstream_status,
        retries,
    )


def call_from_row(row: Sequence[Any]) -> CallRecord:
    """A call from a row in CALL_COLUMNS order."""
    values = dict(zip(CALL_COLUMNS, row, strict=True))
    values.pop("position")
    return CallRecord(**values)
