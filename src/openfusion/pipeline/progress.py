"""Progress of a fusion run in words, for the `delta.reasoning` chunks a streamed response carries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openfusion.pipeline.events import (
    Event,
    JudgeOutcome,
    JudgeStarted,
    PanelAnswer,
    PanelDeadline,
    PanelistDone,
    PanelStarted,
    SynthesisStarted,
)


def _s(ms: int) -> str:
    return f"{ms / 1000:.1f} s"


def describe(event: Event) -> str | None:
    """One line about an event, or None for events that are not progress (answer chunks, the end)."""
    # Looked up by exact type: every relayed answer chunk passes here, and a dict lookup is the cheapest miss.
    describer = _DESCRIBERS.get(type(event))
    return describer(event) if describer is not None else None


def _panel_started(event: PanelStarted) -> str:
    return f"Asking {len(event.models)} models: {', '.join(event.models)}.\n"


def _panelist_done(event: PanelistDone) -> str:
    result = event.result
    name = result.label or result.model
    if isinstance(result, PanelAnswer):
        return f"{name} answered in {_s(result.latency_ms)}.\n"
    why = f"HTTP {result.status_code}" if result.status_code else (result.code or "error")
    return f"{name} failed after {_s(result.latency_ms)} ({why}).\n"


def _panel_deadline(event: PanelDeadline) -> str:
    return (
        f"Panel deadline ({event.deadline_s:g} s) reached with {event.answered} answer(s): "
        f"not waiting for {', '.join(event.dropped)}.\n"
    )


def _judge_started(event: JudgeStarted) -> str:
    if event.attempt > 1:
        return f"Falling back to judge {event.model}.\n"
    return f"{event.model} is comparing the answers.\n"


def _judge_outcome(event: JudgeOutcome) -> str:
    if event.ok:
        return f"Analysis ready in {_s(event.latency_ms)}.\n"
    return f"No analysis from {event.model} ({event.failure_reason}).\n"


def _synthesis_started(event: SynthesisStarted) -> str:
    if event.attempt > 1:
        return f"Falling back to synthesizer {event.model}.\n"
    return f"{event.model} is writing the answer.\n"


_DESCRIBERS: dict[type, Callable[[Any], str]] = {
    PanelStarted: _panel_started,
    PanelistDone: _panelist_done,
    PanelDeadline: _panel_deadline,
    JudgeStarted: _judge_started,
    JudgeOutcome: _judge_outcome,
    SynthesisStarted: _synthesis_started,
}
