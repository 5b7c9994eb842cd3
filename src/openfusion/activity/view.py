"""What the read side shows, computed without FastAPI: JSON bodies, the timeline geometry, display formats."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from openfusion.activity.records import ActivityEntry, CallRecord, GenerationRecord

# The judge's five sections, in the order a reader wants them.
ANALYSIS_SECTIONS = (
    ("consensus", "Consensus"),
    ("contradictions", "Contradictions"),
    ("partial_coverage", "Partial coverage"),
    ("unique_insights", "Unique insights"),
    ("blind_spots", "Blind spots"),
)
# The call whose upstream wrote the answer the client got: its provider and time are the generation's own.
_ANSWERING_ROLES = ("synthesizer", "passthrough", "outer")


def answering_call(calls: tuple[CallRecord, ...]) -> CallRecord | None:
    """The last call that wrote the client's answer, if any."""
    return next((c for c in reversed(calls) if c.role in _ANSWERING_ROLES), None)


def summary_body(generation: GenerationRecord) -> dict[str, Any]:
    """A generation in OpenRouter's GenerationResponse field names, plus openfusion's own."""
    return {
        "id": generation.id,
        "created_at": generation.created_at.isoformat(),
        "model": generation.model or generation.requested_model,
        "requested_model": generation.requested_model,
        "preset": generation.preset,
        "status": generation.status,
        "failure_reason": generation.failure_reason,
        "finish_reason": generation.finish_reason,
        # OpenRouter's `usage` is the amount charged; both stay null when the cost is unknown.
        "total_cost": generation.cost,
        "usage": generation.cost,
        "tokens_prompt": generation.usage.prompt_tokens,
        "tokens_completion": generation.usage.completion_tokens,
        "latency": generation.latency_ms,
        "streamed": generation.streamed,
        "cancelled": generation.status == "cancelled",
        "key_name": generation.key_name,
        "api_type": generation.api_type,
        "status_code": generation.status_code,
        "cache_hit": generation.cache_hit,
        "cost_saved": generation.cost_saved,
        "trace_id": generation.trace_id,
    }


def call_body(call: CallRecord) -> dict[str, Any]:
    """One upstream call of the per-call breakdown."""
    return {
        "role": call.role,
        "model": call.model,
        "provider_name": call.provider,
        "status": call.status,
        "tokens_prompt": call.prompt_tokens,
        "tokens_completion": call.completion_tokens,
        "cost": call.cost,
        "latency": call.latency_ms,
        "started_ms": call.started_ms,
        "error": call.error,
        "upstream_status": call.upstream_status,
        "retries": call.retries,
    }


def generation_body(entry: ActivityEntry) -> dict[str, Any]:
    """The `GET /api/v1/generation` body: `{"data": {...}}`, the call breakdown and, when stored, content."""
    generation = entry.generation
    answering = answering_call(entry.calls)
    data = summary_body(generation)
    data["provider_name"] = answering.provider if answering else None
    data["generation_time"] = answering.latency_ms if answering else None
    data["calls"] = [call_body(c) for c in entry.calls]
    if generation.panel_answers is not None:
        data["panel_answers"] = [p.model_dump() for p in generation.panel_answers]
    if generation.analysis is not None:
        data["analysis"] = generation.analysis
    if generation.final_answer is not None:
        data["final_answer"] = generation.final_answer
    return {"data": data}


@dataclass(frozen=True)
class Point:
    """One item of an analysis section, readable: an optional bold lead, the text, and sub-points."""

    text: str
    lead: str | None = None
    details: tuple[str, ...] = ()


def analysis_points(key: str, value: Any) -> list[Point] | None:
    """A section's items as points, or None when they are not in the judge's known shape (shown raw then)."""
    if not isinstance(value, list):
        return None
    points = [_point(key, item) for item in value]
    return None if any(p is None for p in points) else [p for p in points if p is not None]


def _point(key: str, item: Any) -> Point | None:
    if isinstance(item, str):
        return Point(item)
    if not isinstance(item, dict):
        return None
    try:
        if key == "contradictions":
            stances = tuple(f"{s['model']}: {s['stance']}" for s in item["stances"])
            return Point("", lead=str(item["topic"]), details=stances)
        if key == "partial_coverage":
            return Point(str(item["point"]), details=(f"covered by {', '.join(map(str, item['models']))}",))
        if key == "unique_insights":
            return Point(str(item["insight"]), lead=str(item["model"]))
    except (KeyError, TypeError):
        return None
    return None


@dataclass(frozen=True)
class Bar:
    """One upstream call drawn on the shared time axis (percentages of the axis)."""

    call: CallRecord
    left_pct: float
    width_pct: float

    @property
    def failed(self) -> bool:
        return self.call.status != "ok"


@dataclass(frozen=True)
class Tick:
    left_pct: float
    label: str


@dataclass(frozen=True)
class Timeline:
    total_ms: int
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]


def build_timeline(generation: GenerationRecord, calls: tuple[CallRecord, ...]) -> Timeline:
    """Bars whose offsets and widths are proportional to each call's start and latency on one axis."""
    ends = [c.started_ms + c.latency_ms for c in calls]
    total = max([generation.latency_ms, *ends, 1])
    bars = tuple(
        Bar(call=c, left_pct=100.0 * c.started_ms / total, width_pct=100.0 * c.latency_ms / total) for c in calls
    )
    step = _tick_step(total)
    ticks = tuple(Tick(left_pct=100.0 * t / total, label=format_ms(t)) for t in range(0, total + 1, step))
    return Timeline(total_ms=total, bars=bars, ticks=ticks)


def _tick_step(total_ms: int, *, max_ticks: int = 6) -> int:
    """The smallest 1/2/5 x 10^k step that puts at most `max_ticks` intervals on the axis."""
    magnitude: int = 10 ** max(0, math.floor(math.log10(max(total_ms, 1))) - 1)
    while True:
        for factor in (1, 2, 5):
            step = factor * magnitude
            if total_ms / step <= max_ticks:
                return step
        magnitude *= 10


def format_ms(ms: int | None) -> str:
    """`850 ms`, `12.3 s`."""
    if ms is None:
        return "-"
    return f"{ms} ms" if ms < 1000 else f"{ms / 1000:.1f} s".replace(".0 s", " s")


def format_cost(cost: float | None) -> str:
    """`$0.001234`, or `unknown` (an unknown cost is never shown as 0)."""
    if cost is None:
        return "unknown"
    return f"${cost:.6f}" if cost < 1 else f"${cost:,.2f}"


def format_time(value: datetime) -> str:
    """`2026-11-01 12:00:03 UTC`."""
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")
