"""The `[cache]` section: where cached runs are kept and how much of them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CacheSettings(BaseModel):
    """Server-wide limits of the result cache; which requests are cached is up to presets and the plugin."""

    model_config = ConfigDict(extra="forbid")

    # "auto": Redis when redis_url / REDIS_URL is set, else the activity database, else process memory.
    backend: Literal["auto", "redis", "database", "memory"] = "auto"
    # All cached runs together; past it the least recently used go first.
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    # One run larger than this (serialised) is not cached.
    max_entry_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # A request identical to one being run waits this long for its result before running itself.
    wait_s: float = Field(default=120.0, ge=0, le=3600)
    # A lookup or write slower than this is given up (the request runs, or its result is not kept).
    timeout_s: float = Field(default=2.0, gt=0, le=60)
