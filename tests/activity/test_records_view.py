"""Records validation and the pure read-side views: JSON bodies, timeline geometry, display formats."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from activity.support import FUSION_CALLS, T0, make_entry
from openfusion.activity import ActivityEntry, CallRecord, GenerationRecord, Tokens
from openfusion.activity.view import build_timeline, format_cost, format_ms, generation_body
from openfusion.protocol import Usage


def test_created_at_must_be_aware_and_is_kept_in_utc() -> None:
    with pytest.raises(ValidationError, match="time zone"):
        make_entry("gen-naive", created_at=datetime(2026, 1, 1, 12, 0))
    paris = datetime(2026, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert make_entry("gen-tz", created_at=paris).generation.created_at.utcoffset() == timedelta(0)


def test_unknown_cost_is_none_and_negative_cost_is_refused() -> None:
    assert make_entry("gen-a").generation.cost is None
    with pytest.raises(ValidationError):
        make_entry("gen-b", cost=-1)


def test_calls_must_belong_to_their_generation() -> None:
    entry = make_entry("gen-a")
    with pytest.raises(ValueError, match="attached to generation"):
        ActivityEntry(make_entry("gen-b").generation, entry.calls)


def test_tokens_of_a_wire_usage() -> None:
    assert Tokens.of(Usage(prompt_tokens=3, completion_tokens=4)) == Tokens(
        prompt_tokens=3, completion_tokens=4, total_tokens=7
    )


def test_generation_body_uses_openrouter_field_names() -> None:
    entry = make_entry("gen-body", cost=0.0581, content=True)
    data = generation_body(entry)["data"]
    assert data["id"] == "gen-body"
    assert data["model"] == "anthropic/claude-opus-4.5" and data["requested_model"] == "fusion/quality"
    assert data["total_cost"] == data["usage"] == 0.0581
    assert (data["tokens_prompt"], data["tokens_completion"]) == (3640, 2300)
    assert data["latency"] == 9000 and data["generation_time"] == 2000  # the synthesizer's call
    assert data["provider_name"] == "anthropic"
    assert data["streamed"] is True and data["cancelled"] is False
    assert data["created_at"] == "2026-11-01T12:00:00.123456+00:00"
    assert [c["role"] for c in data["calls"]] == ["panel", "panel", "panel", "judge", "synthesizer"]
    failed = data["calls"][1]
    assert failed["status"] == "error" and failed["upstream_status"] == 429 and failed["retries"] == 2
    assert failed["cost"] is None
    assert data["analysis"]["blind_spots"] and data["final_answer"].startswith("The sky")
    assert len(data["panel_answers"]) == 2


def test_generation_body_without_content_or_answering_call() -> None:
    entry = make_entry("gen-bare", calls=FUSION_CALLS[:2], model=None, status="cancelled")
    data = generation_body(entry)["data"]
    assert data["model"] == "fusion/quality"
    assert data["cancelled"] is True
    assert data["provider_name"] is None and data["generation_time"] is None
    assert "analysis" not in data and "final_answer" not in data and "panel_answers" not in data
    assert data["total_cost"] is None and data["usage"] is None


def test_timeline_bars_are_proportional_on_one_axis() -> None:
    entry = make_entry("gen-tl")
    timeline = build_timeline(entry.generation, entry.calls)
    assert timeline.total_ms == 9000
    geometry = [(round(b.left_pct, 3), round(b.width_pct, 3), b.failed) for b in timeline.bars]
    assert geometry == [
        (0.0, 44.444, False),
        (0.0, 11.111, True),
        (0.0, 22.222, False),
        (44.444, 33.333, False),
        (77.778, 22.222, False),
    ]
    assert [t.label for t in timeline.ticks] == ["0 ms", "2 s", "4 s", "6 s", "8 s"]


def test_timeline_axis_covers_calls_that_end_after_the_recorded_latency() -> None:
    generation = make_entry("gen-x", calls=()).generation.model_copy(update={"latency_ms": 100})
    call = CallRecord(generation_id="gen-x", role="outer", model="m", status="ok", latency_ms=150, started_ms=50)
    timeline = build_timeline(generation, (call,))
    assert timeline.total_ms == 200
    assert (timeline.bars[0].left_pct, timeline.bars[0].width_pct) == (25.0, 75.0)


def test_timeline_of_a_generation_without_calls() -> None:
    generation = GenerationRecord(id="g", created_at=T0, requested_model="m", status="error", latency_ms=0)
    timeline = build_timeline(generation, ())
    assert timeline.bars == () and timeline.total_ms == 1


@pytest.mark.parametrize(("ms", "text"), [(None, "-"), (0, "0 ms"), (850, "850 ms"), (1000, "1 s"), (12345, "12.3 s")])
def test_format_ms(ms: int | None, text: str) -> None:
    assert format_ms(ms) == text


def test_format_cost_never_shows_unknown_as_zero() -> None:
    assert format_cost(None) == "unknown"
    assert format_cost(0.0) == "$0.000000"
    assert format_cost(0.0581) == "$0.058100"
    assert format_cost(12.5) == "$12.50"
