"""Agent loops on the fusion slug: one panel per user turn, reused while the agent's tool calls go back and forth.

An agent calls the model, runs the tools it asked for, and calls it again with the results. Fanning the
panel out again on every such step multiplies cost for no new question; the analysis of the user's turn
is kept here (bounded in size and age) and handed to the synthesizer instead. Each client has its own
turns (`TurnCache.owned_by`): another client replaying the same conversation gets a fresh panel, never
the first one's answers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from openfusion.pipeline.events import Event, JudgeOutcome, PanelAnswer, PanelistDone, RunFinished
from openfusion.pipeline.panel import panel_labels
from openfusion.pipeline.plan import FusionPlan
from openfusion.pipeline.prompts import Messages, message_text


@dataclass(frozen=True)
class Turn:
    """What the panel and judge produced for one user turn, under the plan's `settings` (`panel_settings`)."""

    answers: list[PanelAnswer]
    judges: list[JudgeOutcome]
    settings: str
    stored: float


# Plan fields that shape neither the panel's answers nor the judge's analysis: the synthesizer's, limits and estimates,
# and how the run was asked for and is kept. Every other field (a new one too) is among a turn's settings.
_NOT_THE_PANELS = frozenset(
    {"synthesizers", "synth_timeout_s", "max_cost", "cost", "expose", "mode", "config_param", "force_tool", "refire",
     "cache"}
)  # fmt: skip


def is_agent_step(conversation: Messages) -> bool:
    """Whether the request continues an agent loop: its last message is a tool result."""
    return bool(conversation) and conversation[-1].get("role") in ("tool", "function")


def turn_key(conversation: Messages) -> str:
    """The conversation up to and including its last user message: the turn an agent step continues."""
    last_user = max((i for i, m in enumerate(conversation) if m.get("role") == "user"), default=-1)
    return hashlib.sha256(orjson.dumps(conversation[: last_user + 1], option=orjson.OPT_SORT_KEYS)).hexdigest()


def panel_settings(plan: FusionPlan) -> str:
    """A digest of what shaped the panel's work on a turn: who answered and judged, and how (research tools and the
    domains excluded from them, reasoning, temperature, token and tool-call limits, timeouts and quorum). An agent
    step that changes any of these gets a fresh panel, not the turn's."""
    settings = {name: _plain(getattr(plan, name)) for name in _PANELS_FIELDS}
    return hashlib.sha256(orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)).hexdigest()


# The plan's fields among a turn's settings, found once: per request, `dataclasses.fields` and the filter cost as much
# as reading the values.
_PANELS_FIELDS = tuple(field.name for field in dataclasses.fields(FusionPlan) if field.name not in _NOT_THE_PANELS)


def _plain(value: Any) -> Any:
    return sorted(value) if isinstance(value, frozenset | set) else value


class Turns(Protocol):
    """Where a run finds and keeps its user turns."""

    def get(self, key: str) -> Turn | None:
        """The turn stored under `key`, if still kept."""

    def put(self, key: str, answers: list[PanelAnswer], judges: list[JudgeOutcome], *, settings: str) -> None:
        """Keep a turn under `key`, worked on under `settings`."""


def remember_replayed(turns: Turns, plan: FusionPlan, conversation: Messages, events: list[Event]) -> None:
    """Keep the turn of a run answered again from the result cache, as the run itself kept it: the agent-loop
    steps that follow (on this server, which may not be the one that ran it) reuse its panel and analysis."""
    end = next((e for e in events if isinstance(e, RunFinished)), None)
    if end is None or end.fusion.get("panel_source") != "fresh":
        return
    labels = panel_labels(plan.panel)  # the run kept them in panel order; the events hold their arrival order
    answers = [e.result for e in events if isinstance(e, PanelistDone) and isinstance(e.result, PanelAnswer)]
    answers.sort(key=lambda a: labels.index(a.label) if a.label in labels else len(labels))
    if answers:
        judges = [e for e in events if isinstance(e, JudgeOutcome)]
        turns.put(turn_key(conversation), answers, judges, settings=panel_settings(plan))


class TurnCache:
    """The most recent turns' analyses, least recently used first out, each kept at most `ttl_s`."""

    def __init__(self, *, max_entries: int = 512, ttl_s: float = 1800.0) -> None:
        self._entries: OrderedDict[str, Turn] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl_s

    def get(self, key: str) -> Turn | None:
        turn = self._entries.get(key)
        if turn is None:
            return None
        if time.monotonic() - turn.stored > self._ttl:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return turn

    def put(self, key: str, answers: list[PanelAnswer], judges: list[JudgeOutcome], *, settings: str) -> None:
        self._entries[key] = Turn(list(answers), list(judges), settings, time.monotonic())
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def owned_by(self, owner: str | None) -> OwnedTurns:
        """One client's view (`owner`: its key's name; None without keys): it finds only the turns it stored."""
        return OwnedTurns(self, owner)


class OwnedTurns:
    """The turns of one client, kept in the shared cache (one bound on size and age for all)."""

    def __init__(self, cache: TurnCache, owner: str | None) -> None:
        self._cache = cache
        # Key names never hold a ':', so no owner's prefix can be another's.
        self._prefix = f"{owner or ''}:"

    def get(self, key: str) -> Turn | None:
        """This client's turn under `key`, if still kept."""
        return self._cache.get(self._prefix + key)

    def put(self, key: str, answers: list[PanelAnswer], judges: list[JudgeOutcome], *, settings: str) -> None:
        """Keep a turn for this client."""
        self._cache.put(self._prefix + key, answers, judges, settings=settings)


def flatten_tool_messages(conversation: Messages) -> Messages:
    """The conversation with tool calls and results as plain text: for models that are not offered the tools."""
    flat: Messages = []
    for message in conversation:
        role = message.get("role")
        if role in ("tool", "function"):
            flat.append({"role": "user", "content": f"[tool result]\n{message_text(message)}"})
        elif role == "assistant" and message.get("tool_calls"):
            text = message_text({"content": message.get("content")}) if message.get("content") else ""
            calls = "; ".join(_describe_call(call) for call in message["tool_calls"])
            flat.append({"role": "assistant", "content": f"{text}\n[called tools: {calls}]".strip()})
        else:
            flat.append(message)
    return flat


def _describe_call(call: Any) -> str:
    function = call.get("function") or {} if isinstance(call, dict) else {}
    return f"{function.get('name', '?')}({function.get('arguments', '')})"
