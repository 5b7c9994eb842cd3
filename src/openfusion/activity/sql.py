"""SQL shared by the SQLite and PostgreSQL stores: columns, statements, and record <-> row conversion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from openfusion.activity.records import CallRecord, GenerationRecord, PanelText, Tokens

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
        self.insert_generation = _insert("generations", GENERATION_COLUMNS, p)
        self.insert_call = _insert("calls", CALL_COLUMNS, p)
        # A generation written twice (a retried batch) replaces the first copy instead of failing the batch.
        self.delete_calls = f"DELETE FROM calls WHERE generation_id = {p}"
        self.delete_generation = f"DELETE FROM generations WHERE id = {p}"
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


def _insert(table: str, columns: Sequence[str], placeholder: str) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([placeholder] * len(columns))})"


def generation_values(record: GenerationRecord) -> tuple[Any, ...]:
    """A record as values in GENERATION_COLUMNS order (created_at stays a datetime)."""
    panels = record.panel_answers
    panel = None if panels is None else orjson.dumps([p.model_dump() for p in panels]).decode()
    return (
        record.id,
        record.created_at,
        record.requested_model,
        record.model,
        record.preset,
        record.status,
        record.failure_reason,
        record.finish_reason,
        record.latency_ms,
        record.usage.prompt_tokens,
        record.usage.completion_tokens,
        record.usage.total_tokens,
        record.cost,
        record.streamed,
        record.key_name,
        panel,
        orjson.dumps(record.analysis).decode() if record.analysis is not None else None,
        record.final_answer,
    )


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
        panel_answers=[PanelText(**p) for p in orjson.loads(panel)] if panel is not None else None,
        analysis=orjson.loads(analysis) if analysis is not None else None,
        final_answer=values.get("final_answer"),
    )


def call_values(call: CallRecord, position: int) -> tuple[Any, ...]:
    """A call as values in CALL_COLUMNS order; `position` keeps the order the calls were recorded in."""
    return (
        call.generation_id,
        position,
        call.role,
        call.model,
        call.provider,
        call.status,
        call.prompt_tokens,
        call.completion_tokens,
        call.cost,
        call.latency_ms,
        call.started_ms,
        call.error,
        call.upstream_status,
        call.retries,
    )


def call_from_row(row: Sequence[Any]) -> CallRecord:
    """A call from a row in CALL_COLUMNS order."""
    values = dict(zip(CALL_COLUMNS, row, strict=True))
    values.pop("position")
    return CallRecord(**values)
