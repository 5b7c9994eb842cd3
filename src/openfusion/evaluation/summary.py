"""Per-model results from the results file: score, pass rate, cost, latency, failures, and fusion's lift."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from openfusion.evaluation.dataset import Task
from openfusion.evaluation.records import AnswerRecord, ResultStore
from openfusion.evaluation.scoring import mean, pass_rate, percentile, rubric_score
from openfusion.presets import is_fusion_slug
from openfusion.protocol import round_usd


@dataclass(frozen=True)
class ModelSummary:
    """One model over the selected tasks; scores are means over tasks of means over repeats."""

    model: str
    tasks: int
    score: float
    pass_rate: float
    answers: int
    answer_failures: int
    grader_failures: int
    cost: float | None  # total over answers that reported usage.cost; None when none did
    cost_reported: int
    grader_cost: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    panel_calls: int = 0
    panel_failures: int = 0
    domains: dict[str, float] = field(default_factory=dict)

    @property
    def cost_known(self) -> bool:
        """Whether every answer reported its cost."""
        return self.answers > 0 and self.cost_reported == self.answers


@dataclass(frozen=True)
class Lift:
    """A fusion model against the best of its panel members that were evaluated too."""

    model: str
    score: float
    panel: list[str]
    evaluated: dict[str, float]  # member -> score
    missing: list[str]

    @property
    def best(self) -> str | None:
        """The evaluated member with the highest score."""
        return max(self.evaluated, key=lambda m: self.evaluated[m]) if self.evaluated else None

    @property
    def points(self) -> float | None:
        """Fusion's score minus its best evaluated member's, in percentage points."""
        best = self.best
        return None if best is None else (self.score - self.evaluated[best]) * 100


def summarize(
    store: ResultStore, *, tasks: Sequence[Task], models: Sequence[str], grader: str, repeats: int
) -> list[ModelSummary]:
    """Every model's summary, in the order given."""
    return [_summarize_model(store, model=m, tasks=tasks, grader=grader, repeats=repeats) for m in models]


@dataclass
class _Graded:
    """One answer's grades over its repeats."""

    score: float = 0.0
    pass_rate: float = 0.0
    failures: int = 0
    costs: list[float] = field(default_factory=list)


def _grade_answer(store: ResultStore, *, answer: AnswerRecord, task: Task, grader: str, repeats: int) -> _Graded:
    graded = _Graded()
    scores: list[float] = []
    rates: list[float] = []
    for repeat in range(repeats):
        verdicts: list[tuple[float, bool]] = []
        for criterion in task.criteria:
            grade = store.grade((answer.model, task.id, answer.digest, criterion.key, repeat, grader))
            if grade is not None and grade.cost is not None:
                graded.costs.append(grade.cost)
            if grade is None or grade.error is not None:
                graded.failures += 1  # counted as UNMET, and reported
                verdicts.append((criterion.weight, False))
            else:
                verdicts.append((criterion.weight, grade.met))
        scores.append(rubric_score(verdicts))
        rates.append(pass_rate(verdicts))
    graded.score, graded.pass_rate = mean(scores), mean(rates)
    return graded


def _summarize_model(
    store: ResultStore, *, model: str, tasks: Sequence[Task], grader: str, repeats: int
) -> ModelSummary:
    scores: list[float] = []
    rates: list[float] = []
    by_domain: dict[str, list[float]] = defaultdict(list)
    answered = [a for t in tasks if (a := store.answer(model, t.id)) is not None and a.ok]
    grader_failures = 0
    grader_costs: list[float] = []
    for task in tasks:
        answer = store.answer(model, task.id)
        graded = _Graded()  # no answer: the task scores 0
        if answer is not None and answer.ok:
            graded = _grade_answer(store, answer=answer, task=task, grader=grader, repeats=repeats)
        grader_failures += graded.failures
        grader_costs += graded.costs
        scores.append(graded.score)
        rates.append(graded.pass_rate)
        by_domain[task.domain].append(graded.score)
    costs = [a.cost for a in answered if a.cost is not None]
    panel = [member for a in answered for member in a.panel or []]
    latencies = [float(a.latency_ms) for a in answered]
    return ModelSummary(
        model=model,
        tasks=len(tasks),
        score=mean(scores),
        pass_rate=mean(rates),
        answers=len(answered),
        answer_failures=len(tasks) - len(answered),
        grader_failures=grader_failures,
        cost=round_usd(sum(costs)) if costs else None,
        cost_reported=len(costs),
        grader_cost=round_usd(sum(grader_costs)) if grader_costs else None,
        latency_p50_ms=percentile(latencies, 50),
        latency_p95_ms=percentile(latencies, 95),
        panel_calls=len(panel),
        panel_failures=sum(1 for member in panel if member.get("status") != "ok"),
        domains={domain: mean(values) for domain, values in sorted(by_domain.items())},
    )


def lifts(summaries: Sequence[ModelSummary], panels: Mapping[str, Sequence[str]]) -> list[Lift]:
    """The lift of every evaluated fusion model whose panel the server listed."""
    scores = {s.model: s.score for s in summaries}
    out: list[Lift] = []
    for summary in summaries:
        if not is_fusion_slug(summary.model) or summary.model not in panels:
            continue
        panel = list(dict.fromkeys(panels[summary.model]))  # a self-panel lists its model twice
        out.append(
            Lift(
                model=summary.model,
                score=summary.score,
                panel=panel,
                evaluated={m: scores[m] for m in panel if m in scores},
                missing=[m for m in panel if m not in scores],
            )
        )
    return out
