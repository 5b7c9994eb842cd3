"""The judge: a strict-JSON analysis of the panel's answers, repaired once, degraded rather than fatal."""

from __future__ import annotations

import time
from typing import Any

from openfusion.errors import OpenFusionError, UpstreamStatusError
from openfusion.pipeline import sampling
from openfusion.pipeline.analysis import AnalysisError, parse_analysis
from openfusion.pipeline.events import JudgeOutcome, PanelAnswer
from openfusion.pipeline.prompts import Messages, judge_messages, judge_repair_messages
from openfusion.pipeline.research import NO_RESEARCH, ResearchPlan, answer_with_research
from openfusion.pipeline.structured import DialectMemory, rejects_response_format, response_format
from openfusion.protocol import Usage
from openfusion.upstream.client import Completion, UpstreamClient
from openfusion.upstream.stage import stage_limit

_TRUNCATED = (
    "the reply was cut off at the token limit (max_completion_tokens {limit}) before it was complete; "
    "keep every item short so the whole object fits"
)


async def ask_for_json(
    upstream: UpstreamClient, model: str, body: dict[str, Any], *, dialects: DialectMemory
) -> tuple[Completion, str, list[str]]:
    """A completion asked for schema-shaped JSON, stepping down the dialects and the sampling parameters the
    model refuses; with the dialect used and the sampling parameters left out."""
    candidates = dialects.candidates(model)
    for dialect in candidates:
        try:
            completion, dropped = await sampling.complete(
                upstream, model, {**body, "response_format": response_format(dialect)}, memory=dialects.sampling
            )
        except UpstreamStatusError as exc:
            if dialect == candidates[-1] or not rejects_response_format(exc):
                raise
            dialects.rejected(model, dialect)
            continue
        return completion, dialect, dropped
    raise AssertionError("unreachable: the last dialect sends no response_format")


def judge_answers(answers: list[PanelAnswer]) -> list[tuple[str, str]]:
    """The answers as the judge's prompt names them: (label, content)."""
    return [(a.label or a.model, a.content) for a in answers]


async def analyse(
    upstream: UpstreamClient,
    *,
    model: str,
    conversation: Messages,
    answers: list[PanelAnswer],
    reasoning: dict[str, Any] | None,
    max_completion_tokens: int,
    timeout_s: float,
    dialects: DialectMemory,
    research: ResearchPlan = NO_RESEARCH,
    prompt: Messages | None = None,
) -> JudgeOutcome:
    """Ask the judge for the analysis; at most one repair call; failures become a reason, not an error.

    `prompt`: the judge's messages for this conversation and these answers, made already (`PreparedPrompts`)."""
    started = time.perf_counter()
    messages = prompt
    if messages is None:
        messages = judge_messages(conversation=conversation, answers=judge_answers(answers))
    usages: list[Usage] = []
    base = {"temperature": 0, "reasoning": reasoning, "max_completion_tokens": max_completion_tokens}
    outcome = JudgeOutcome(model=model, latency_ms=0, usages=usages)

    async def call(history: Messages, tools: list[dict[str, Any]] | None, choice: str | None) -> Completion:
        body = {**base, "messages": history, "tools": tools, "tool_choice": choice}
        completion, outcome.dialect, dropped = await ask_for_json(upstream, model, body, dialects=dialects)
        outcome.dropped = sampling.names([*outcome.dropped, *dropped])
        return completion

    for attempt in range(2):
        outcome.attempts = attempt + 1
        try:
            async with stage_limit(timeout_s):
                # The judge may verify claims on the web first; the repair call only fixes its JSON.
                done = await answer_with_research(
                    call, messages=messages, plan=research if attempt == 0 else NO_RESEARCH, usages=usages
                )
        except TimeoutError:
            outcome.failure_reason = "judge_upstream_error"
            outcome.detail = f"{model} did not answer within judge_timeout_s ({timeout_s:g} s)"
            break
        except OpenFusionError as exc:
            outcome.failure_reason, outcome.detail = "judge_upstream_error", exc.message
            break
        if attempt == 0:
            outcome.research = done.log
        completion = done.completion
        try:
            if completion.finish_reason == "length":  # JSON cut short can still parse (or be repaired) as valid
                raise AnalysisError("judge_truncated", _TRUNCATED.format(limit=max_completion_tokens))
            outcome.analysis = parse_analysis(completion.content)
        except AnalysisError as exc:
            outcome.failure_reason, outcome.detail = exc.reason, exc.detail
            messages = judge_repair_messages(messages=messages, reply=completion.content, error=exc.detail)
            continue
        outcome.failure_reason = outcome.detail = None
        break
    outcome.latency_ms = round((time.perf_counter() - started) * 1000)
    return outcome
