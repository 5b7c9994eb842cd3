"""The one orchestrator: panel, then judge, then synthesizer, reported as a stream of events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from openfusion.errors import FusionFailed
from openfusion.pipeline.events import (
    Event,
    JudgeOutcome,
    JudgeStarted,
    PanelAnswer,
    PanelFailure,
    PanelistDone,
    PanelStarted,
    RunFinished,
    SynthesisChunk,
    SynthesisMessage,
)
from openfusion.pipeline.judge import analyse
from openfusion.pipeline.panel import collect_answers, panel_labels
from openfusion.pipeline.plan import FusionPlan
from openfusion.pipeline.prompts import Messages, synthesis_messages
from openfusion.pipeline.synthesize import synthesis_body
from openfusion.protocol import ChatRequest, Usage, parse_usage, sum_usage
from openfusion.upstream.client import UpstreamClient


async def run_fusion(
    *, upstream: UpstreamClient, plan: FusionPlan, request: ChatRequest, stream: bool
) -> AsyncIterator[Event]:
    """Run one fusion request. Raises FusionFailed when no panelist answered."""
    conversation: Messages = [message.model_dump(exclude_none=True) for message in request.messages]
    results: list[PanelAnswer | PanelFailure] = []
    judge: JudgeOutcome | None = None
    answers: list[PanelAnswer] = []
    if plan.enabled:
        yield PanelStarted(list(plan.panel))
        async for result in collect_answers(upstream, models=plan.panel, body=_panel_body(plan, conversation)):
            results.append(result)
            yield PanelistDone(result)
        labels = panel_labels(plan.panel)
        results.sort(key=lambda r: labels.index(r.label))  # panel order, not arrival order
        answers = [r for r in results if isinstance(r, PanelAnswer)]
        if not answers:
            raise all_panels_failed([r for r in results if isinstance(r, PanelFailure)])
        yield JudgeStarted(plan.judge)
        judge = await analyse(
            upstream,
            model=plan.judge,
            conversation=conversation,
            answers=answers,
            reasoning=plan.reasoning,
            max_completion_tokens=plan.max_completion_tokens,
        )
        yield judge
        messages = synthesis_messages(
            conversation=conversation,
            analysis=judge.analysis,
            answers=[(a.label, a.content) for a in answers],
        )
    else:
        messages = conversation
    body = synthesis_body(request, plan, messages)
    started = time.perf_counter()
    synth_usage = Usage()
    reported_model = plan.synthesizer
    if stream:
        async with upstream.stream(plan.synthesizer, body) as chunks:
            async for chunk in chunks:
                reported_model = chunk.get("model") or reported_model
                if chunk.get("usage"):
                    synth_usage = parse_usage(chunk["usage"])
                if chunk.get("choices"):
                    yield SynthesisChunk(chunk)
    else:
        completion = await upstream.complete(plan.synthesizer, body)
        synth_usage, reported_model = completion.usage, completion.model
        yield SynthesisMessage(completion.message, completion.finish_reason)
    synth_ms = round((time.perf_counter() - started) * 1000)
    usages = [a.usage for a in answers] + (judge.usages if judge else []) + [synth_usage]
    yield RunFinished(
        model=reported_model,
        usage=sum_usage(usages),
        fusion=fusion_report(plan, results=results, judge=judge, synth_ms=synth_ms, synth_usage=synth_usage),
    )


def _panel_body(plan: FusionPlan, conversation: Messages) -> dict[str, Any]:
    return {
        "messages": conversation,
        "temperature": plan.temperature,
        "reasoning": plan.reasoning,
        "max_completion_tokens": plan.max_completion_tokens,
    }


def all_panels_failed(failures: list[PanelFailure]) -> FusionFailed:
    """The error for a panel with no answer, coded by the most actionable cause."""
    statuses = {f.status_code for f in failures}
    if 402 in statuses:
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
    return entry


def fusion_report(
    plan: FusionPlan,
    *,
    results: list[PanelAnswer | PanelFailure],
    judge: JudgeOutcome | None,
    synth_ms: int,
    synth_usage: Usage,
) -> dict[str, Any]:
    """The response's top-level `fusion` object."""
    panel: list[dict[str, Any]] = []
    for result in results:
        if isinstance(result, PanelAnswer):
            panel.append(
                {"model": result.model, "status": "ok", "latency_ms": result.latency_ms, "usage": result.usage.render()}
            )
        else:
            error: dict[str, Any] = {"message": result.message}
            if result.status_code is not None:
                error["status_code"] = result.status_code
            panel.append({"model": result.model, "status": "error", "latency_ms": result.latency_ms, "error": error})
    report: dict[str, Any] = {"preset": plan.preset, "panel": panel}
    if judge is None:
        report["judge"] = {"model": plan.judge, "status": "skipped"}
    else:
        report["judge"] = {
            "model": judge.model,
            "status": "ok" if judge.ok else "error",
            "latency_ms": judge.latency_ms,
            "attempts": judge.attempts,
            "usage": sum_usage(judge.usages).render(),
        }
        if judge.failure_reason:
            report["judge"]["failure_reason"] = judge.failure_reason
            report["judge"]["error"] = judge.detail
    report["synthesizer"] = {"model": plan.synthesizer, "latency_ms": synth_ms, "usage": synth_usage.render()}
    if plan.expose:
        report["analysis"] = judge.analysis.model_dump() if judge and judge.analysis else None
        report["responses"] = [
            {"model": r.label or r.model, "content": r.content} for r in results if isinstance(r, PanelAnswer)
        ]
    return report
