"""The response's top-level `fusion` object: what ran, what failed and why, and what it cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openfusion.pipeline import sampling
from openfusion.pipeline.events import JudgeOutcome, PanelAnswer, PanelFailure
from openfusion.pipeline.plan import FusionPlan
from openfusion.pipeline.research import ResearchLog, ResearchPlan
from openfusion.pipeline.synthesize import SynthesisStream
from openfusion.protocol import sum_usage
from openfusion.upstream.web import Source


def panel_entry(result: PanelAnswer | PanelFailure) -> dict[str, Any]:
    if isinstance(result, PanelAnswer):
        entry = {"model": result.model, "status": "ok", "latency_ms": result.latency_ms, "usage": result.usage.render()}
        if result.research.tool_calls:
            entry["server_tool_use_details"] = result.research.details()
        return _with_dropped(entry, result.dropped)
    entry: dict[str, Any] = {"model": result.model, "status": "error", "latency_ms": result.latency_ms}
    if result.usage is not None:  # billed before it failed (an empty answer, research rounds)
        entry["usage"] = result.usage.render()
    error: dict[str, Any] = {"message": result.message}
    if result.status_code is not None:
        error["status_code"] = result.status_code
    if result.code:
        error["code"] = result.code
    if result.cause:
        error["cause"] = result.cause
    return _with_dropped({**entry, "error": error}, result.dropped)


def judge_entry(plan: FusionPlan, judges: list[JudgeOutcome]) -> dict[str, Any]:
    if not judges:
        return {"model": plan.judge, "status": "skipped"}
    last = judges[-1]
    entry: dict[str, Any] = {
        "model": last.model,
        "status": "ok" if last.ok else "error",
        "latency_ms": sum(j.latency_ms for j in judges),
        "attempts": sum(j.attempts for j in judges),
        "usage": sum_usage([u for j in judges for u in j.usages]).render(),
    }
    if last.dialect:
        entry["structured_output"] = last.dialect
    _with_dropped(entry, sampling.names(name for j in judges for name in j.dropped))
    if any(j.research.tool_calls for j in judges):
        entry["server_tool_use_details"] = research_totals([j.research for j in judges])
    if not last.ok:
        entry["failure_reason"] = last.failure_reason
        entry["error"] = last.detail
    if len(judges) > 1:
        entry["fallbacks"] = [
            {"model": j.model, "failure_reason": j.failure_reason, "error": j.detail} for j in judges[:-1]
        ]
    return entry


def _with_dropped(entry: dict[str, Any], dropped: list[str]) -> dict[str, Any]:
    """The entry, saying which sampling parameters its model refused and was called without."""
    if dropped:
        entry["unsupported_parameters"] = dropped
    return entry


def research_totals(logs: list[ResearchLog]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for log in logs:
        for key, value in log.details().items():
            totals[key] = totals.get(key, 0) + value
    return totals


def _research_entry(research: ResearchPlan) -> dict[str, Any] | None:
    """Which research tools were asked for and offered, and why one was not (e.g. no search backend)."""
    if not research.tools:
        return None
    offered = sorted(tool["function"]["name"] for tool in research.offered())
    entry: dict[str, Any] = {"requested": sorted(research.tools), "offered": offered}
    if "web_search" in research.tools and "web_search" not in offered:
        reason = research.research.search_unavailable_reason if research.research else None
        entry["web_search_unavailable"] = reason or "web research is not configured on this server"
    return entry


@dataclass(frozen=True, slots=True)
class StagesReport:
    """The parts of the `fusion` object that are fixed once the panel and the judge are done."""

    panel: list[dict[str, Any]]
    judge: dict[str, Any]
    estimated_max_cost: float | None = None  # the plan's worst case, priced here if nothing priced it before
    research: dict[str, Any] | None = None
    server_tool_use: dict[str, int] | None = None
    exposed: dict[str, Any] | None = None  # the analysis and the panel's answers, for a preset that exposes them


def stages_report(
    plan: FusionPlan,
    *,
    results: list[PanelAnswer | PanelFailure],
    judges: list[JudgeOutcome],
    research: ResearchPlan | None = None,
) -> StagesReport:
    """What the report says of the panel and the judge: made while the synthesizer's answer is awaited."""
    logs = [r.research for r in results if isinstance(r, PanelAnswer)] + [j.research for j in judges]
    exposed = None
    if plan.expose:
        analysis = judges[-1].analysis if judges else None
        exposed = {
            "analysis": analysis.model_dump() if analysis else None,
            "responses": [
                {"model": r.label or r.model, "content": r.content} for r in results if isinstance(r, PanelAnswer)
            ],
        }
    return StagesReport(
        panel=[panel_entry(result) for result in results],
        judge=judge_entry(plan, judges),
        estimated_max_cost=plan.estimated_max_cost,
        research=_research_entry(research) if research is not None else None,
        server_tool_use=research_totals(logs) if any(log.tool_calls for log in logs) else None,
        exposed=exposed,
    )


def fusion_report(
    plan: FusionPlan,
    *,
    stages: StagesReport,
    synthesis: SynthesisStream,
    synth_ms: int,
    sources: list[Source] | None = None,
    usage_complete: bool = True,
) -> dict[str, Any]:
    """The `fusion` object of a finished run."""
    report: dict[str, Any] = {
        "preset": plan.preset,
        "estimated_max_cost": stages.estimated_max_cost,
        "panel": stages.panel,
        "judge": stages.judge,
        "synthesizer": {
            "model": synthesis.model,
            "latency_ms": synth_ms,
            "usage": synthesis.usage.render() if synthesis.usage_known else None,
        },
        # False when some upstream call's usage is unknown: the summed `usage` then leaves it out.
        "usage_complete": usage_complete,
    }
    if stages.research is not None:
        report["research"] = stages.research
    if stages.server_tool_use is not None:
        report["server_tool_use_details"] = stages.server_tool_use
    if sources:
        report["sources"] = [{"url": s.url, "title": s.title} for s in sources]
    if synthesis.failures:
        report["synthesizer"]["fallbacks"] = [{"model": m, "error": why} for m, why in synthesis.failures]
    _with_dropped(report["synthesizer"], synthesis.dropped)
    if stages.exposed is not None:
        report.update(stages.exposed)
    return report
