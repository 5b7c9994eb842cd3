"""The one orchestrator: panel, then judge, then synthesizer, reported as a stream of events."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from openfusion.errors import FusionFailed
from openfusion.pipeline.events import (
    Event,
    JudgeOutcome,
    JudgeStarted,
    PanelAnswer,
    PanelDeadline,
    PanelFailure,
    PanelistDone,
    PanelStarted,
    RunFinished,
    SynthesisChunk,
    SynthesisMessage,
    SynthesisStarted,
)
from openfusion.pipeline.judge import analyse
from openfusion.pipeline.panel import collect_answers, panel_labels
from openfusion.pipeline.plan import FusionPlan
from openfusion.pipeline.prompts import Messages, synthesis_messages
from openfusion.pipeline.report import fusion_report
from openfusion.pipeline.structured import DialectMemory
from openfusion.pipeline.synthesize import MessageAccumulator, SynthesisStream, synthesis_body
from openfusion.protocol import ChatRequest, sum_usage
from openfusion.upstream.client import UpstreamClient


async def run_fusion(
    *,
    upstream: UpstreamClient,
    plan: FusionPlan,
    request: ChatRequest,
    stream: bool,
    dialects: DialectMemory | None = None,
) -> AsyncIterator[Event]:
    """Run one fusion request. Raises FusionFailed when the panel has too few answers."""
    conversation: Messages = [message.model_dump(exclude_none=True) for message in request.messages]
    dialects = dialects or DialectMemory()
    results: list[PanelAnswer | PanelFailure] = []
    judges: list[JudgeOutcome] = []
    if plan.enabled:
        yield PanelStarted(list(plan.panel))
        panel = collect_answers(
            upstream,
            models=plan.panel,
            body=_panel_body(plan, conversation),
            timeout_s=plan.panel_timeout_s,
            deadline_s=plan.panel_deadline_s,
            min_successful=plan.min_successful,
        )
        async with contextlib.aclosing(panel):  # leaving early closes every panel call at once
            async for result in panel:
                if isinstance(result, PanelDeadline):
                    yield result
                    continue
                results.append(result)
                yield PanelistDone(result)
        labels = panel_labels(plan.panel)
        results.sort(key=lambda r: labels.index(r.label))  # panel order, not arrival order
        answers = [r for r in results if isinstance(r, PanelAnswer)]
        if len(answers) < plan.min_successful:
            raise panel_failed([r for r in results if isinstance(r, PanelFailure)], answers, plan.min_successful)
        for attempt, model in enumerate(plan.judges, start=1):
            yield JudgeStarted(model, attempt)
            outcome = await analyse(
                upstream,
                model=model,
                conversation=conversation,
                answers=answers,
                reasoning=plan.reasoning,
                max_completion_tokens=plan.max_completion_tokens,
                timeout_s=plan.judge_timeout_s,
                dialects=dialects,
            )
            judges.append(outcome)
            yield outcome
            if outcome.ok:
                break
        analysis = judges[-1].analysis
        messages = synthesis_messages(
            conversation=conversation, analysis=analysis, answers=[(a.label, a.content) for a in answers]
        )
    else:
        messages = conversation
    synthesis = SynthesisStream(
        upstream,
        models=plan.synthesizers,
        body=synthesis_body(request, plan, messages),
        first_token_timeout_s=plan.synth_timeout_s,
        client_streams=stream,
    )
    started = time.perf_counter()
    accumulator = MessageAccumulator()
    chunks = synthesis.chunks()
    async with contextlib.aclosing(chunks):  # leaving early closes the synthesizer's stream at once
        async for item in chunks:
            if isinstance(item, SynthesisStarted):
                yield item
            elif stream:
                yield SynthesisChunk(item)
            else:
                accumulator.feed(item)
    if not stream:
        yield SynthesisMessage(accumulator.message(), accumulator.finish_reason)
    synth_ms = round((time.perf_counter() - started) * 1000)
    usages = [r.usage for r in results if isinstance(r, PanelAnswer)]
    usages += [usage for judge in judges for usage in judge.usages] + [synthesis.usage]
    yield RunFinished(
        model=synthesis.reported_model or synthesis.model,
        usage=sum_usage(usages),
        fusion=fusion_report(plan, results=results, judges=judges, synthesis=synthesis, synth_ms=synth_ms),
    )


def _panel_body(plan: FusionPlan, conversation: Messages) -> dict[str, Any]:
    return {
        "messages": conversation,
        "temperature": plan.temperature,
        "reasoning": plan.reasoning,
        "max_completion_tokens": plan.max_completion_tokens,
    }


def panel_failed(failures: list[PanelFailure], answers: list[PanelAnswer], min_successful: int) -> FusionFailed:
    """The error for a panel without enough answers, coded by the most actionable cause."""
    statuses = {f.status_code for f in failures}
    if answers:
        code = "insufficient_quorum"
        what = f"only {len(answers)} of the {min_successful} answers the quorum needs arrived"
    elif 402 in statuses:
        code, what = "insufficient_credits", "a provider reported insufficient credits (402)"
    elif 429 in statuses:
        code, what = "rate_limited", "a provider rate-limited the request (429)"
    else:
        code, what = "all_panels_failed", "all panel models failed"
    details = "; ".join(f"{f.label or f.model}: {f.message}" for f in failures)
    return FusionFailed(
        f"Fusion failed: {what}. {details}",
        code=code,
        failures=[_failure_entry(f) for f in failures],
    )


def _failure_entry(failure: PanelFailure) -> dict[str, Any]:
    entry: dict[str, Any] = {"model": failure.model, "error": failure.message}
    if failure.status_code is not None:
        entry["status_code"] = failure.status_code
    if failure.code == "timeout":
        entry["reason"] = "timeout"
    return entry
