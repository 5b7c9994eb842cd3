"""The pre-run estimate: how many calls are still to make, and what they cost when prices are given."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from openfusion.evaluation.dataset import Task
from openfusion.evaluation.errors import EvalError
from openfusion.evaluation.records import ResultStore, needs_answer, needs_grade


@dataclass(frozen=True)
class Prices:
    """USD per call: per model, with an optional default for every other model."""

    per_model: dict[str, float]
    default: float | None = None

    @classmethod
    def parse(cls, items: Sequence[str]) -> Prices:
        """From `MODEL=USD` items and at most one bare `USD` (the default); raises EvalError."""
        per_model: dict[str, float] = {}
        default: float | None = None
        for item in items:
            model, sep, price = item.rpartition("=")
            value = _price(price, item)
            if sep:
                per_model[model.strip()] = value
            elif default is None:
                default = value
            else:
                raise EvalError(f"--price-per-call {item!r}: a default price was already given")
        return cls(per_model, default)

    def of(self, model: str) -> float | None:
        """The price of one call to `model`, if known."""
        return self.per_model.get(model, self.default)


@dataclass(frozen=True)
class ModelPlan:
    """The calls one model still needs: its answers and the grader calls on them."""

    model: str
    answers_todo: int
    answers_done: int
    grades_todo: int
    grades_done: int


@dataclass(frozen=True)
class Estimate:
    """Every model's plan, the grader, and the estimated cost where prices are known."""

    models: list[ModelPlan]
    grader: str
    prices: Prices

    @property
    def answer_calls(self) -> int:
        """Answer calls still to make."""
        return sum(m.answers_todo for m in self.models)

    @property
    def grader_calls(self) -> int:
        """Grader calls still to make."""
        return sum(m.grades_todo for m in self.models)

    @property
    def calls(self) -> int:
        """All calls still to make."""
        return self.answer_calls + self.grader_calls

    def cost(self) -> tuple[float, list[str]]:
        """Estimated USD of the calls still to make over the priced models, and the unpriced ones."""
        total = 0.0
        unpriced: list[str] = []
        for plan in self.models:
            price = self.prices.of(plan.model)
            if price is None and plan.answers_todo:
                unpriced.append(plan.model)
            total += (price or 0.0) * plan.answers_todo
        grader_price = self.prices.of(self.grader)
        if grader_price is None and self.grader_calls:
            unpriced.append(self.grader)
        total += (grader_price or 0.0) * self.grader_calls
        return total, unpriced


def estimate(
    *,
    tasks: Sequence[Task],
    models: Sequence[str],
    grader: str,
    repeats: int,
    store: ResultStore,
    prices: Prices,
    retry_failures: bool = False,
) -> Estimate:
    """Count the calls not yet in the results file (and the failed ones, when they are retried)."""
    plans: list[ModelPlan] = []
    for model in models:
        answers_todo = answers_done = grades_todo = grades_done = 0
        for task in tasks:
            answer = store.answer(model, task.id)
            if needs_answer(answer, retry_failures=retry_failures):
                answers_todo += 1
                grades_todo += len(task.criteria) * repeats  # a new answer needs every grade
                continue
            answers_done += 1
            if answer is None or not answer.ok:
                continue  # a failure that stays: nothing to grade
            for criterion in task.criteria:
                for repeat in range(repeats):
                    grade = store.grade((model, task.id, answer.digest, criterion.key, repeat, grader))
                    if needs_grade(grade, retry_failures=retry_failures):
                        grades_todo += 1
                    else:
                        grades_done += 1
        plans.append(ModelPlan(model, answers_todo, answers_done, grades_todo, grades_done))
    return Estimate(plans, grader, prices)


def _price(text: str, item: str) -> float:
    try:
        value = float(text.strip().removeprefix("$"))
    except ValueError:
        raise EvalError(f"--price-per-call {item!r}: expected MODEL=USD or USD, e.g. fusion/budget=0.12") from None
    if value < 0:
        raise EvalError(f"--price-per-call {item!r}: a price cannot be negative")
    return value
