"""Per-model summaries and fusion's lift from a hand-made results file."""

from __future__ import annotations

from pathlib import Path

import pytest

from openfusion.evaluation.records import AnswerRecord, GradeRecord, ResultStore
from openfusion.evaluation.summary import ModelSummary, lifts, summarize

from .scenario import fixture_tasks

GRADER = "g"


def answer(store: ResultStore, model: str, task_id: str, **fields: object) -> AnswerRecord:
    record = AnswerRecord.model_validate({"model": model, "task_id": task_id, "content": f"{model} {task_id}"} | fields)
    store.append(record)
    return record


def grade_all(
    store: ResultStore, record: AnswerRecord, met: dict[str, bool], *, repeat: int = 0, **fields: object
) -> None:
    """Grade every criterion of the answer's task: MET where `met` says so, UNMET elsewhere."""
    task = next(t for t in fixture_tasks() if t.id == record.task_id)
    for criterion in task.criteria:
        values = {
            "model": record.model,
            "task_id": record.task_id,
            "answer_digest": record.digest,
            "criterion": criterion.key,
            "repeat": repeat,
            "grader": GRADER,
            "met": met.get(criterion.key, False),
        }
        store.append(GradeRecord.model_validate(values | fields))


def test_repeats_are_averaged_and_failures_count_as_unmet(tmp_path: Path) -> None:
    tasks = [t for t in fixture_tasks() if t.id in ("fin-1", "med-2")]
    with ResultStore(tmp_path / "r.jsonl") as store:
        fin1 = answer(store, "m", "fin-1", latency_ms=100, cost=0.25)
        # Repeat 0: +10, +5 MET -> 15/20 = 0.75, passes 3/4 (c1, c2, the avoided -10).
        grade_all(store, fin1, {"factual-accuracy/c1": True, "factual-accuracy/c2": True}, repeat=0)
        # Repeat 1: every call failed (even a record saying MET) -> all UNMET -> 0/20 = 0, passes 1/4.
        grade_all(store, fin1, {"factual-accuracy/c1": True}, repeat=1, error="HTTP 500: boom")
        med2 = answer(store, "m", "med-2", latency_ms=300, cost=0.5)
        # Both repeats: the -10 error MET -> 1 - 10/40 = 0.75, passes 1/2.
        grade_all(store, med2, {"factual-accuracy/c1": True}, repeat=0, cost=0.001)
        grade_all(store, med2, {"factual-accuracy/c1": True}, repeat=1, cost=0.001)

        (summary,) = summarize(store, tasks=tasks, models=["m"], grader=GRADER, repeats=2)

    # fin-1: (0.75 + 0) / 2 = 0.375; med-2: 0.75. Mean: 0.5625.
    assert summary.score == pytest.approx(0.5625)
    # fin-1: (3/4 + 1/4) / 2 = 0.5; med-2: 0.5. Mean: 0.5.
    assert summary.pass_rate == pytest.approx(0.5)
    assert (summary.answers, summary.answer_failures, summary.grader_failures) == (2, 0, 4)
    assert summary.cost == pytest.approx(0.75) and summary.cost_known
    assert summary.grader_cost == pytest.approx(4 * 0.001)
    assert (summary.latency_p50_ms, summary.latency_p95_ms) == (100, 300)
    assert summary.domains == {"Finance": pytest.approx(0.375), "Medicine": pytest.approx(0.75)}


def test_a_missing_answer_scores_zero_and_costs_stay_honest(tmp_path: Path) -> None:
    tasks = [t for t in fixture_tasks() if t.id in ("fin-1", "fin-2", "med-2")]
    with ResultStore(tmp_path / "r.jsonl") as store:
        fin1 = answer(store, "m", "fin-1", cost=0.1)
        grade_all(
            store, fin1, {"factual-accuracy/c1": True, "factual-accuracy/c2": True, "presentation-quality/p1": True}
        )
        med2 = answer(store, "m", "med-2")  # this provider reported no cost
        grade_all(store, med2, {})
        answer(store, "m", "fin-2", content=None, error="HTTP 400: refused")

        (summary,) = summarize(store, tasks=tasks, models=["m"], grader=GRADER, repeats=1)

    # fin-1 1.0, med-2 1.0 (no error made), fin-2 0 (no answer): 2/3.
    assert summary.score == pytest.approx(2 / 3)
    assert summary.pass_rate == pytest.approx(2 / 3)
    assert (summary.answers, summary.answer_failures) == (2, 1)
    assert (summary.cost, summary.cost_reported, summary.cost_known) == (pytest.approx(0.1), 1, False)


def summary_of(model: str, score: float) -> ModelSummary:
    return ModelSummary(
        model=model,
        tasks=1,
        score=score,
        pass_rate=score,
        answers=1,
        answer_failures=0,
        grader_failures=0,
        cost=None,
        cost_reported=0,
        grader_cost=None,
        latency_p50_ms=None,
        latency_p95_ms=None,
    )


def test_lift_is_over_the_best_evaluated_member_and_names_the_missing_ones() -> None:
    summaries = [summary_of("fusion/budget", 0.647), summary_of("x/flash", 0.431), summary_of("x/deepseek", 0.603)]
    panels = {"fusion/budget": ["x/flash", "x/deepseek", "x/kimi"], "fusion/quality": ["x/opus"]}

    (lift,) = lifts(summaries, panels)

    assert (lift.best, lift.missing) == ("x/deepseek", ["x/kimi"])
    assert lift.points == pytest.approx(4.4)
    assert lift.evaluated == {"x/flash": 0.431, "x/deepseek": 0.603}


def test_a_self_panel_compares_with_its_one_model_and_no_member_means_no_lift() -> None:
    summaries = [summary_of("fusion/self", 0.655), summary_of("x/opus", 0.588), summary_of("fusion/solo", 0.5)]
    panels = {"fusion/self": ["x/opus", "x/opus"], "fusion/solo": ["x/other"]}

    self_panel, solo = lifts(summaries, panels)

    assert (self_panel.panel, self_panel.best) == (["x/opus"], "x/opus")
    assert self_panel.points == pytest.approx(6.7)
    assert (solo.best, solo.points, solo.missing) == (None, None, ["x/other"])
    assert lifts([summary_of("x/opus", 0.5)], panels) == []  # only fusion models get a lift
