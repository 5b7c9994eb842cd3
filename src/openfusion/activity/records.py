"""What the activity store keeps: one GenerationRecord per request and one CallRecord per upstream call."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from openfusion.protocol import Usage

GenerationStatus = Literal["ok", "error", "cancelled"]
CallRole = Literal["panel", "judge", "synthesizer", "outer", "passthrough"]
CallStatus = Literal["ok", "error", "cancelled"]
# The API surface a request came through (OpenRouter's `api_type`).
ApiType = Literal["completions", "responses", "messages"]

Name = Annotated[str, Field(min_length=1, max_length=512)]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Tokens(_Record):
    """Token counts of a generation (cost is kept apart, because unknown cost must stay unknown)."""

    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    total_tokens: int = Field(default=0, ge=0)

    @classmethod
    def of(cls, usage: Usage) -> Tokens:
        """The token counts of a wire `Usage`."""
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
        )


class PanelText(_Record):
    """One panelist's answer, kept only when content storage is on."""

    model: str
    content: str


class GenerationRecord(_Record):
    """One request as the activity store keeps it."""

    id: Name
    created_at: datetime
    requested_model: Name
    # The model the answering upstream reported (synthesizer or pass-through), when known.
    model: str | None = None
    preset: str | None = None
    status: GenerationStatus
    failure_reason: str | None = None
    finish_reason: str | None = None
    latency_ms: int = Field(ge=0)
    usage: Tokens = Field(default_factory=Tokens)
    cost: float | None = Field(default=None, ge=0)  # USD; None means unknown, never 0 or -1
    streamed: bool = False
    key_name: str | None = None  # the client key's configured name, never the key itself
    api_type: ApiType = "completions"
    # The HTTP status of the response: a stream that failed (or was left) after it began was a 200; None
    # for a client that left before any response, and for rows older than this field.
    status_code: int | None = None
    # Answered from the result cache: no upstream call was made; `cost_saved` is what the original run cost.
    cache_hit: bool = False
    cost_saved: float | None = Field(default=None, ge=0)
    # The OpenTelemetry trace of the request (32 hex digits), when tracing is on.
    trace_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    # Content, stored only with `store_content` on.
    panel_answers: list[PanelText] | None = None
    # The judge's analysis as JSON (Analysis.model_dump()): kept schemaless so old rows stay readable.
    analysis: dict[str, Any] | None = None
    final_answer: str | None = None

    @field_validator("created_at")
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("created_at must carry a time zone")
        return value.astimezone(UTC)

    @property
    def has_content(self) -> bool:
        """Whether any content field is set."""
        return self.panel_answers is not None or self.analysis is not None or self.final_answer is not None

    def without_content(self) -> GenerationRecord:
        """The same record with the content fields cleared (metadata only)."""
        if not self.has_content:
            return self
        return self.model_copy(update={"panel_answers": None, "analysis": None, "final_answer": None})


class CallRecord(_Record):
    """One upstream call made for a generation."""

    generation_id: Name
    role: CallRole
    model: Name
    provider: str | None = None
    status: CallStatus
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    cost: float | None = Field(default=None, ge=0)  # USD; None means unknown
    latency_ms: int = Field(ge=0)
    started_ms: int = Field(default=0, ge=0)  # offset from the generation's start, for the timeline
    error: str | None = None
    upstream_status: int | None = None
    retries: int = Field(default=0, ge=0)


@dataclass(frozen=True)
class ActivityEntry:
    """A generation with its upstream calls: the unit the writer queues and the store writes."""

    generation: GenerationRecord
    calls: tuple[CallRecord, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for call in self.calls:
            if call.generation_id != self.generation.id:
                raise ValueError(f"call for {call.generation_id!r} attached to generation {self.generation.id!r}")

    @property
    def generation_id(self) -> str:
        """The generation's id."""
        return self.generation.id


@dataclass(frozen=True, slots=True)
class EntryRows:
    """A generation with its upstream calls as the rows a store writes, made straight from what a request recorded.

    What the server itself measured and named (a request's ledger) needs no validating on its way to the store: these
    rows hold the same values its `ActivityEntry` would (`sql.entry_rows` makes them of one), without the records.
    `generation`: the values in `sql.GENERATION_COLUMNS` order, `created_at` time-zone aware, every string storable;
    `calls`: each call's in `sql.CALL_COLUMNS` order.
    """

    generation_id: str
    generation: tuple[Any, ...]
    calls: tuple[tuple[Any, ...], ...] = ()


# What the writer queues and a store writes: records (read back, or made by hand), or rows made straight from a request.
Writable = ActivityEntry | EntryRows


@dataclass(frozen=True)
class ActivityPage:
    """One page of `list`: generations newest first (content not loaded), and whether older ones exist."""

    generations: tuple[GenerationRecord, ...]
    has_more: bool

    @property
    def next_before(self) -> str | None:
        """The cursor for the next (older) page, or None on the last page."""
        return self.generations[-1].id if self.has_more and self.generations else None


def start_of_day() -> datetime:
    """Midnight UTC today: where a daily spend cap's day begins."""
    return utc_now().replace(hour=0, minute=0, second=0, microsecond=0)


def utc_now() -> datetime:
    """The current time, time-zone aware in UTC (what `created_at` expects)."""
    return datetime.now(UTC)
