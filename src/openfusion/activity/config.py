"""The `[activity]` configuration section (the lead adds it to Settings as `activity`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class ActivitySettings(BaseModel):
    """Where activity is recorded and how the background writer batches it."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # SQLite file, created on first start; None: $XDG_STATE_HOME/openfusion/activity.sqlite3.
    # DATABASE_URL=postgresql://... in the environment selects PostgreSQL instead.
    path: Path | None = None
    # Panel answers, analysis and final answer are kept only when the operator opts in.
    store_content: bool = False
    queue_size: int = Field(default=10_000, ge=1)
    batch_size: int = Field(default=100, ge=1, le=10_000)
    flush_interval_s: float = Field(default=0.5, gt=0, le=60)
    # A write that hangs longer than this is given up, so an outage cannot stall the queue forever; its records stay
    # queued while the store does not answer a ping, and are written once it does.
    write_timeout_s: float = Field(default=10.0, gt=0)
    pool_max_size: int = Field(default=4, ge=1, le=100)
    # A response's end ([DONE] of a stream, the body of any other) waits until its record is in the store,
    # so a replica killed right after a client saw its answer cannot take the record with it (one store
    # write, shared by the requests ending together). Unset: on with PostgreSQL (replicas), off with SQLite.
    record_before_end: bool | None = None
    # Responses API responses are kept this long for `previous_response_id` (unless sent with `store: false`);
    # 0: never kept. They hold the conversation whatever `store_content` says: the client asked for it.
    response_retention_days: float = Field(default=30.0, ge=0, le=3650)
