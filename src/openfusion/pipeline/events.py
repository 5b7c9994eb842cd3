"""What a fusion run reports as it goes: typed events, rendered by the edge (SSE or a JSON body)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from openfusion.pipeline.analysis import Analysis
from openfusion.pipeline.research import ResearchLog
from openfusion.protocol import Usage


@dataclass
class PanelAnswer:
    """A panelist that answered."""

    model: str
    content: str
    latency_ms: int
    usage: Usage
    reported_model: str | None = None
    label: str = ""  # the name the judge and synthesizer see (unique even when a model sits twice)
    research: ResearchLog = field(default_factory=ResearchLog)
    dropped: list[str] = field(default_factory=list)  # sampling parameters the model refused, left out


@dataclass
class PanelFailure:
    """A panelist that failed, with why."""

    model: str
    message: str
    latency_ms: int
    status_code: int | None = None
    code: str | None = None
    label: str = ""
    cause: str | None = None  # a transport failure's cause (name_not_resolved, connection_refused, …)
    usage: Usage | None = None  # what its calls were billed before it failed, when any reported usage
    dropped: list[str] = field(default_factory=list)  # sampling parameters the model refused, left out


@dataclass
class PanelStarted:
    models: list[str]


@dataclass
class PanelDelta:
    """A piece of a panelist's answer (or reasoning) as it streams; only for runs that ask for it."""

    label: str
    delta: str
    reasoning: bool = False


@dataclass
class PanelDeadline:
    """The panel deadline passed with a quorum: the stragglers are dropped."""

    deadline_s: float
    answered: int
    dropped: list[str]


@dataclass
class PanelistDone:
    result: PanelAnswer | PanelFailure


@dataclass
class JudgeStarted:
    model: str
    attempt: int = 1  # 2 and more: a fallback judge


@dataclass
class SynthesisStarted:
    model: str
    attempt: int = 1  # 2 and more: a fallback synthesizer


@dataclass
class JudgeOutcome:
    """The judge stage: an analysis, or why there is none."""

    model: str
    latency_ms: int
    analysis: Analysis | None = None
    failure_reason: str | None = None
    detail: str | None = None
    usages: list[Usage] = field(default_factory=list)
    attempts: int = 0
    dialect: str | None = None  # how structured output was asked for (see pipeline.structured)
    dropped: list[str] = field(default_factory=list)  # sampling parameters the model refused, left out
    research: ResearchLog = field(default_factory=ResearchLog)

    @property
    def ok(self) -> bool:
        return self.analysis is not None


@dataclass
class SynthesisChunk:
    """One chunk of the synthesizer's stream, as the upstream sent it."""

    chunk: dict[str, Any]


@dataclass
class SynthesisMessage:
    """The synthesizer's whole message (non-streamed runs)."""

    message: dict[str, Any]
    finish_reason: str | None


@dataclass
class RunContent:
    """What a run said, for the activity store: kept only when the operator turns on content storage."""

    panel_answers: list[tuple[str, str]] = field(default_factory=list)  # (label, text), in panel order
    analysis: Analysis | None = None  # the judge's: turned into JSON only for a store that keeps it
    final_answer: str | None = None


@dataclass
class RunFinished:
    """The end of a run: what the response reports."""

    model: str  # as the answering model's upstream calls itself (Chat Completions reports it)
    usage: Usage
    fusion: dict[str, Any]
    slug: str | None = None  # openfusion's slug of the model that wrote the answer (a fallback's, when one did)
    annotations: list[dict[str, Any]] = field(default_factory=list)  # citations, for streamed answers
    server_tool_use: dict[str, int] | None = None  # research counts, for `usage.server_tool_use_details`
    content: RunContent = field(default_factory=RunContent)  # for the activity store


Event = (
    PanelStarted
    | PanelDelta
    | PanelistDone
    | PanelDeadline
    | JudgeStarted
    | JudgeOutcome
    | SynthesisStarted
    | SynthesisChunk
    | SynthesisMessage
    | RunFinished
)
