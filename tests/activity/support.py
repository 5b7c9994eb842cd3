"""Builders of realistic activity records for the activity tests, and a listener to what a writer says of them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from openfusion.activity import ActivityEntry, CallRecord, GenerationRecord, PanelText, Tokens

T0 = datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC)

ANALYSIS = {
    "consensus": ["Rayleigh scattering makes the sky blue."],
    "contradictions": [
        {"topic": "sunset colour", "stances": [{"model": "a", "stance": "red"}, {"model": "b", "stance": "orange"}]}
    ],
    "partial_coverage": [{"models": ["a"], "point": "ozone absorption"}],
    "unique_insights": [{"model": "c", "insight": "Mars has blue sunsets."}],
    "blind_spots": ["Nobody mentioned the eye's sensitivity."],
}

# Three panelists (one failed with a 429), the judge, the synthesizer: latencies chosen to be easy to compare.
FUSION_CALLS: tuple[dict[str, Any], ...] = (
    {
        "role": "panel",
        "model": "openai/gpt-5",
        "provider": "openai",
        "status": "ok",
        "latency_ms": 4000,
        "started_ms": 0,
        "prompt_tokens": 120,
        "completion_tokens": 800,
        "cost": 0.0081,
    },
    {
        "role": "panel",
        "model": "google/gemini-2.5-pro",
        "provider": "openrouter",
        "status": "error",
        "latency_ms": 1000,
        "started_ms": 0,
        "error": "returned HTTP 429: rate limited",
        "upstream_status": 429,
        "retries": 2,
    },
    {
        "role": "panel",
        "model": "deepseek/deepseek-v3.2",
        "provider": "deepseek",
        "status": "ok",
        "latency_ms": 2000,
        "started_ms": 0,
        "prompt_tokens": 120,
        "completion_tokens": 500,
    },
    {
        "role": "judge",
        "model": "anthropic/claude-opus-4.5",
        "provider": "anthropic",
        "status": "ok",
        "latency_ms": 3000,
        "started_ms": 4000,
        "prompt_tokens": 1500,
        "completion_tokens": 400,
        "cost": 0.02,
    },
    {
        "role": "synthesizer",
        "model": "anthropic/claude-opus-4.5",
        "provider": "anthropic",
        "status": "ok",
        "latency_ms": 2000,
        "started_ms": 7000,
        "prompt_tokens": 1900,
        "completion_tokens": 600,
        "cost": 0.03,
    },
)


def make_entry(
    generation_id: str,
    *,
    created_at: datetime = T0,
    content: bool = False,
    calls: tuple[dict[str, Any], ...] = FUSION_CALLS,
    **fields: Any,
) -> ActivityEntry:
    """A fusion generation with its calls; `content=True` adds answers, analysis and the final answer."""
    values: dict[str, Any] = {
        "id": generation_id,
        "created_at": created_at,
        "requested_model": "fusion/quality",
        "model": "anthropic/claude-opus-4.5",
        "preset": "quality",
        "status": "ok",
        "finish_reason": "stop",
        "latency_ms": 9000,
        "usage": Tokens(prompt_tokens=3640, completion_tokens=2300, total_tokens=5940),
        "cost": None,
        "streamed": True,
        "key_name": "team-a",
    }
    if content:
        values["panel_answers"] = [
            PanelText(model="openai/gpt-5", content="Blue, because of Rayleigh scattering."),
            PanelText(model="deepseek/deepseek-v3.2", content="Short wavelengths scatter more.\nSecond line."),
        ]
        values["analysis"] = ANALYSIS
        values["final_answer"] = "The sky is blue because air scatters short wavelengths most."
    values.update(fields)
    generation = GenerationRecord(**values)
    return ActivityEntry(generation, tuple(CallRecord(generation_id=generation_id, **c) for c in calls))


def entries_over_time(count: int, *, step: timedelta = timedelta(seconds=1)) -> list[ActivityEntry]:
    """`count` generations one `step` apart, oldest first (ids sort like their times)."""
    return [make_entry(f"gen-{i:03d}", created_at=T0 + i * step) for i in range(count)]


class Told:
    """What a writer told records' `on_written` callbacks, in the order told (`said`) and, through `of`, by generation
    id (`by_id`); `everything` waits until `expected` were told."""

    def __init__(self, expected: int) -> None:
        self.said: list[bool] = []
        self.by_id: dict[str, bool] = {}
        self._expected = expected
        self._all_told = asyncio.Event()

    def __call__(self, written: bool) -> None:
        self.said.append(written)
        if len(self.said) == self._expected:
            self._all_told.set()

    def of(self, generation_id: str) -> Callable[[bool], None]:
        """The callback for one record, keeping what it is told under its id too."""

        def written(ok: bool) -> None:
            self.by_id[generation_id] = ok
            self(ok)

        return written

    async def everything(self) -> None:
        await self._all_told.wait()
