"""The pre-run estimate: calls still to make per model, and their cost when prices are given."""

from __future__ import annotations

from pathlib import Path

import pytest

from openfusion.evaluation.command import render_estimate
from openfusion.evaluation.errors import EvalError
from openfusion.evaluation.estimate import Prices, estimate
from openfusion.evaluation.records import AnswerRecord, GradeRecord, ResultStore

from .scenario import fixture_tasks

TASKS = fixture_tasks()  # 4 tasks, 12 criteria


def test_a_fresh_run_needs_every_answer_and_every_grader_call(tmp_path: Path) -> None:
    plan = estimate(
        tasks=TASKS,
        models=["fusion/budget", "x/solo"],
        grader="g",
        repeats=2,
        store=ResultStore(tmp_path / "r.jsonl"),
        prices=Prices.parse(["fusion/budget=0.10", "x/solo=0.01", "g=0.001"]),
    )

    assert (plan.answer_calls, plan.grader_calls, plan.calls) == (8, 2 * 2 * 12, 8 + 48)
    # 4 x 0.10 + 4 x 0.01 + 48 x 0.001
    assert plan.cost() == (pytest.approx(0.488), [])
    text = render_estimate(plan, tasks=4, available=4, repeats=2)
    assert "8 answer calls + 48 grader calls = 56 calls" in text
    assert "estimated cost: $0.4880" in text


def test_recorded_calls_are_not_counted_again(tmp_path: Path) -> None:
    fin1 = next(t for t in TASKS if t.id == "fin-1")
    with ResultStore(tmp_path / "r.jsonl") as store:
        done = AnswerRecord(model="m", task_id="fin-1", content="x")
        store.append(done)
        for criterion in fin1.criteria[:3]:
            values = {"model": "m", "task_id": "fin-1", "answer_digest": done.digest, "criterion": criterion.key}
            store.append(GradeRecord.model_validate(values | {"repeat": 0, "grader": "g", "met": True}))
        store.append(AnswerRecord(model="m", task_id="med-1", error="HTTP 500: boom"))

        kept = estimate(tasks=TASKS, models=["m"], grader="g", repeats=1, store=store, prices=Prices({}))
        retried = estimate(
            tasks=TASKS, models=["m"], grader="g", repeats=1, store=store, prices=Prices({}), retry_failures=True
        )
        other_grader = estimate(tasks=TASKS, models=["m"], grader="h", repeats=1, store=store, prices=Prices({}))

    (plan,) = kept.models
    # fin-1 answered with 3 of 4 grades; med-1 failed (kept); fin-2 and med-2 to do (3 + 2 criteria).
    assert (plan.answers_todo, plan.answers_done, plan.grades_todo, plan.grades_done) == (2, 2, 1 + 5, 3)
    (plan,) = retried.models
    assert (plan.answers_todo, plan.grades_todo) == (3, 1 + 5 + 3)  # med-1 again, with its 3 criteria
    assert other_grader.grader_calls == 4 + 5  # another grader's verdicts do not count


def test_unknown_prices_are_said_to_be_unknown(tmp_path: Path) -> None:
    plan = estimate(
        tasks=TASKS[:1],
        models=["fusion/budget", "x/solo"],
        grader="g",
        repeats=1,
        store=ResultStore(tmp_path / "r.jsonl"),
        prices=Prices.parse(["x/solo=0.5"]),
    )

    assert plan.cost() == (pytest.approx(0.5), ["fusion/budget", "g"])
    text = render_estimate(plan, tasks=1, available=4, repeats=1)
    assert "estimated cost: $0.5000 for the priced models, unknown for fusion/budget, g" in text


def test_prices_parse_per_model_and_default() -> None:
    prices = Prices.parse(["fusion/budget=0.12", "$0.01", "x/y=$2"])

    assert (prices.of("fusion/budget"), prices.of("x/y"), prices.of("other")) == (0.12, 2.0, 0.01)
    assert Prices.parse([]).of("any") is None
    for bad in (["fusion/budget=cheap"], ["0.1", "0.2"], ["x=-1"]):
        with pytest.raises(EvalError, match="--price-per-call"):
            Prices.parse(bad)
