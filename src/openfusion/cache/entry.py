"""A cached run: the pipeline's events as they were produced, serialised, and replayed for any surface.

The events are kept, not a surface's bytes, so one run answers Chat Completions, Responses and
Messages alike, streamed or not: a run recorded streamed is replayed whole (its chunks gathered
into one message) for a non-streamed request, and one recorded whole is replayed as a stream of
one chunk for a streamed request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from openfusion.pipeline.events import (
    Event,
    JudgeOutcome,
    JudgeStarted,
    PanelDeadline,
    PanelDelta,
    PanelistDone,
    PanelStarted,
    RunFinished,
    SynthesisChunk,
    SynthesisMessage,
    SynthesisStarted,
)
from openfusion.pipeline.synthesize import MessageAccumulator
from openfusion.protocol import Usage

_KINDS: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        PanelStarted,
        PanelDelta,
        PanelistDone,
        PanelDeadline,
        JudgeStarted,
        JudgeOutcome,
        SynthesisStarted,
        SynthesisChunk,
        SynthesisMessage,
        RunFinished,
    )
}
_ADAPTERS = {name: TypeAdapter(cls) for name, cls in _KINDS.items()}


class CorruptEntry(ValueError):
    """A stored entry that cannot be read back (another version wrote it, or it was damaged)."""


def dump_event(event: Event) -> dict[str, Any]:
    """One event as JSON-ready data, tagged with its kind (copied: later changes to the event do not show)."""
    name = type(event).__name__
    return {"kind": name, "data": _ADAPTERS[name].dump_python(event, mode="json")}


def encode_run(*, generation_id: str, created_at: float, cost: float | None, streamed: bool,
               flags: list[str], events: list[dict[str, Any]]) -> bytes:  # fmt: skip
    """The bytes a store keeps for one run; `events` are `dump_event()` of each event, in order."""
    return orjson.dumps({"generation_id": generation_id, "created_at": created_at, "cost": cost,
                         "streamed": streamed, "flags": flags, "events": events})  # fmt: skip


@dataclass(frozen=True)
class CachedRun:
    """One run read back from the cache."""

    generation_id: str  # the run that produced it
    created_at: float  # Unix seconds
    cost: float | None  # what that run cost (USD), when known: what a hit saves
    streamed: bool  # whether its answer came as chunks (else as one message)
    flags: frozenset[str]  # "degraded", "research": served only to requests that allow it
    events: list[Event]

    @classmethod
    def decode(cls, raw: bytes) -> CachedRun:
        """Read back what `encode_run` wrote; CorruptEntry when it cannot be."""
        try:
            data = orjson.loads(raw)
            cost = data["cost"]
            return cls(str(data["generation_id"]), float(data["created_at"]),
                       float(cost) if cost is not None else None, bool(data["streamed"]),
                       frozenset(map(str, data["flags"])), list(_load(data["events"])))  # fmt: skip
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CorruptEntry(f"unreadable cache entry: {exc}") from None

    def replay(self, *, stream: bool, panel_deltas: bool) -> list[Event]:
        """The events a request gets on a hit: the run's own, reshaped for `stream`, with a cost of 0."""
        events = self.events if panel_deltas else [e for e in self.events if not isinstance(e, PanelDelta)]
        if stream and not self.streamed:
            events = _as_stream(events)
        elif not stream and self.streamed:
            events = _as_message(events)
        return [self._hit(e) if isinstance(e, RunFinished) else e for e in events]

    def _hit(self, event: RunFinished) -> RunFinished:
        """The end of a replay: nothing was spent, and the fusion object says where the answer came from."""
        fusion = {**event.fusion, "cached": True,
                  "cache": {"generation_id": self.generation_id, "created_at": round(self.created_at),
                            "cost_saved": self.cost}}  # fmt: skip
        return replace(event, usage=Usage(cost=0.0), fusion=fusion, server_tool_use=None)


def _load(events: Iterable[dict[str, Any]]) -> Iterable[Event]:
    for item in events:
        try:
            yield _ADAPTERS[item["kind"]].validate_python(item["data"])
        except ValidationError as exc:
            raise CorruptEntry(f"unreadable cache entry: {exc}") from None


def _as_stream(events: list[Event]) -> list[Event]:
    """A whole message as one chunk; its citations move to the end, where a stream carries them."""
    finished = next(e for e in events if isinstance(e, RunFinished))
    out: list[Event] = []
    for event in events:
        if isinstance(event, SynthesisMessage):
            message = dict(event.message)
            annotations = message.pop("annotations", None) or []
            if message.get("tool_calls"):
                message["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
            choice = {"index": 0, "delta": message, "finish_reason": event.finish_reason}
            out.append(SynthesisChunk({"object": "chat.completion.chunk", "model": finished.model,
                                       "choices": [choice]}))  # fmt: skip
            finished = replace(finished, annotations=[*finished.annotations, *annotations])
        elif not isinstance(event, RunFinished):
            out.append(event)
    return [*out, finished]


def _as_message(events: list[Event]) -> list[Event]:
    """Chunks gathered into the one message a non-streamed response carries, citations included."""
    accumulator = MessageAccumulator()
    out: list[Event] = []
    for event in events:
        if isinstance(event, SynthesisChunk):
            accumulator.feed(event.chunk)
        elif isinstance(event, RunFinished):
            message = accumulator.message()
            if event.annotations:
                message["annotations"] = [*message.get("annotations", []), *event.annotations]
            out.append(SynthesisMessage(message, accumulator.finish_reason))
            out.append(replace(event, annotations=[]))
        else:
            out.append(event)
    return out


async def replayed(events: list[Event]) -> AsyncIterator[Event]:
    """The events as the async stream a surface renders."""
    for event in events:
        yield event
