"""The report: Markdown for people, JSON for scripts, both from the same summaries."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from openfusion.evaluation.dataset import Task
from openfusion.evaluation.summary import Lift, ModelSummary

CHART_NAME = "score_vs_cost.png"


@dataclass(frozen=True)
class RunInfo:
    """What the report says about how the run was made."""

    data: str
    tasks: Sequence[Task]
    available: int
    seed: int
    base_url: str
    grader: str
    grader_temperature: float
    repeats: int
    blocked_hosts: Sequence[str]  # empty: the leak guard was off
    panels: dict[str, list[str]] = field(default_factory=dict)  # fusion model -> its panel (GET /v1/models)
    panels_error: str | None = None  # why the fusion panels could not be listed


def render_markdown(info: RunInfo, summaries: Sequence[ModelSummary], lifts: Sequence[Lift]) -> str:
    """The whole report.md."""
    domains = Counter(t.domain for t in info.tasks)
    lines = [
        "# openfusion eval report",
        "",
        f"- Data: `{info.data}`: {len(info.tasks)} of {info.available} tasks (seed {info.seed}); "
        + ", ".join(f"{d} {n}" for d, n in sorted(domains.items())),
        f"- Grader: `{info.grader}` at temperature {info.grader_temperature:g}, one call per criterion, "
        f"{info.repeats} repeat(s) averaged",
        f"- Server: {info.base_url}",
        "- Leak guard: "
        + (
            "fusion web research excludes " + ", ".join(f"`{h}`" for h in info.blocked_hosts)
            if info.blocked_hosts
            else "off (`--allow-leaky-hosts`)"
        ),
        f"- Generated: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        "## Results",
        "",
        "| model | score | pass rate | total cost | latency p50 | latency p95 | answers | grader failures |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| `{s.model}` | {_pct(s.score)} | {_pct(s.pass_rate)} | {format_cost(s)} | "
            f"{_latency(s.latency_p50_ms)} | {_latency(s.latency_p95_ms)} | {s.answers}/{s.tasks} | "
            f"{s.grader_failures} |"
        )
    lines += [
        "",
        "Score per task: clamp(Σ weights of MET criteria / Σ positive weights, 0, 1), where a MET negative "
        "criterion (an error the answer commits) subtracts its weight; a rubric with no positive weight "
        "scores 1 + Σ MET weights / Σ |negative weights|. Pass rate: share of criteria passed (positive MET, "
        "negative UNMET). Both are averaged over repeats, then over tasks; a task without an answer scores 0 "
        "and a grader failure counts as UNMET. Cost is the answers' `usage.cost` (grading excluded); "
        "latency is the client's wall time per answer (nearest-rank percentiles).",
        "",
        *_lift_section(lifts, info.panels_error),
        *_domain_section(summaries),
        *_failure_section(summaries),
        "## Score vs cost",
        "",
        f"![score vs cost]({CHART_NAME})",
        "",
        f"Grading cost: {_grading_cost(summaries)} (the grader's `usage.cost`, where reported).",
        "",
    ]
    return "\n".join(lines)


def summary_json(info: RunInfo, summaries: Sequence[ModelSummary], lifts: Sequence[Lift]) -> dict[str, Any]:
    """The same numbers as the Markdown report, for scripts."""
    return {
        "data": info.data,
        "tasks": [t.id for t in info.tasks],
        "grader": info.grader,
        "grader_temperature": info.grader_temperature,
        "repeats": info.repeats,
        "blocked_hosts": list(info.blocked_hosts),
        "models": [asdict(s) | {"cost_known": s.cost_known} for s in summaries],
        "lifts": [asdict(lift) | {"best": lift.best, "lift_points": lift.points} for lift in lifts],
    }


def write_report(out: Path, info: RunInfo, summaries: Sequence[ModelSummary], lifts: Sequence[Lift]) -> Path:
    """Write report.md and summary.json into `out`; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.md"
    report.write_text(render_markdown(info, summaries, lifts), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary_json(info, summaries, lifts), indent=2) + "\n")
    return report


def format_cost(summary: ModelSummary) -> str:
    """Total answer cost, 'unknown', or a lower bound when only some answers reported theirs."""
    if summary.cost is None:
        return "unknown"
    if not summary.cost_known:
        return f"≥ {_usd(summary.cost)} ({summary.cost_reported}/{summary.answers} reported)"
    return _usd(summary.cost)


def _lift_section(lifts: Sequence[Lift], panels_error: str | None) -> list[str]:
    lines = ["## Fusion lift over the best panel member", ""]
    if panels_error:
        return [*lines, f"Not computed: the server's model list failed ({panels_error}).", ""]
    if not lifts:
        return [*lines, "No fusion model with a listed panel was evaluated.", ""]
    lines += [
        "| fusion model | score | best evaluated member | its score | lift | panel members not evaluated |",
        "|---|---:|---|---:|---:|---|",
    ]
    for lift in lifts:
        missing = ", ".join(f"`{m}`" for m in lift.missing) or "none"
        if lift.best is None or lift.points is None:
            lines.append(f"| `{lift.model}` | {_pct(lift.score)} | none evaluated | | | {missing} |")
        else:
            best_score = _pct(lift.evaluated[lift.best])
            lines.append(
                f"| `{lift.model}` | {_pct(lift.score)} | `{lift.best}` | {best_score} | "
                f"{lift.points:+.1f} pts | {missing} |"
            )
    lines += [
        "",
        "The lift is fusion's score minus the best score among its panel members that were evaluated in this "
        "run; add the missing members to `--models` to compare against the whole panel.",
        "",
    ]
    return lines


def _domain_section(summaries: Sequence[ModelSummary]) -> list[str]:
    domains = sorted({d for s in summaries for d in s.domains})
    if len(domains) < 2:
        return []
    lines = [
        "## Score by domain",
        "",
        "| domain | " + " | ".join(f"`{s.model}`" for s in summaries) + " |",
        "|---|" + "---:|" * len(summaries),
    ]
    for domain in domains:
        cells = [_pct(s.domains[domain]) if domain in s.domains else "" for s in summaries]
        lines.append(f"| {domain} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _failure_section(summaries: Sequence[ModelSummary]) -> list[str]:
    notes = []
    for s in summaries:
        if s.answer_failures:
            notes.append(f"- `{s.model}`: {s.answer_failures} task(s) without an answer (scored 0)")
        if s.grader_failures:
            notes.append(f"- `{s.model}`: {s.grader_failures} grader failure(s) (counted as UNMET)")
        if s.panel_failures:
            notes.append(f"- `{s.model}`: {s.panel_failures} of {s.panel_calls} panel calls failed inside fusion")
    if not notes:
        return []
    return [
        "## Failures",
        "",
        *notes,
        "",
        "Details are in `results.jsonl`; a re-run with `--retry-failures` redoes the failed calls.",
        "",
    ]


def _grading_cost(summaries: Sequence[ModelSummary]) -> str:
    known = [s.grader_cost for s in summaries if s.grader_cost is not None]
    return _usd(sum(known)) if known else "unknown"


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def _usd(value: float) -> str:
    return f"${value:.4f}"


def _latency(ms: float | None) -> str:
    if ms is None:
        return "n/a"
    return f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms"
