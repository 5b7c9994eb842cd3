"""Progress of a fusion run in words, for the `delta.reasoning` chunks a streamed response carries."""

from __future__ import annotations

from functools import singledispatch

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


@singledispatch
def describe(event: Event) -> str | None:
    """One line about an event, or None for events that are not progress (answer chunks, the end)."""
    return None


@describe.register
def _(event: PanelStarted) -> str:
    return f"Asking {len(event.models)} models: {', '.join(event.models)}.\n"


@describe.register
def _(event: PanelistDone) -> str:
    result = event.result
    name = result.label or result.model
    if isinstance(result, PanelAnswer):
        return f"{name} answered in {_s(result.latency_ms)}.\n"
    why = f"HTTP {result.status_code}" if result.status_code else (result.code or "error")
    return f"{name} failed after {_s(result.latency_ms)} ({why}).\n"


@describe.register
def _(event: PanelDeadline) -> str:
    return (
        f"Panel deadline ({event.deadline_s:g} s) reached with {event.answered} answer(s): "
        f"not waiting for {', '.join(event.dropped)}.\n"
    )


@describe.register
def _(event: JudgeStarted) -> str:
    if event.attempt > 1:
        return f"Falling back to judge {event.model}.\n"
    return f"{event.model} is comparing the answers.\n"


@describe.register
def _(event: JudgeOutcome) -> str:
    if event.ok:
        return f"Analysis ready in {_s(event.latency_ms)}.\n"
    return f"No analysis from {event.model} ({event.failure_reason}).\n"


@describe.register
def _(event: SynthesisStarted) -> str:
    if event.attempt > 1:
        return f"Falling back to synthesizer {event.model}.\n"
    return f"{event.model} is writing the answer.\n"
