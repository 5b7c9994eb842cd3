"""The Markdown report and the chart, from summaries made by hand."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from openfusion.evaluation.chart import draw_chart
from openfusion.evaluation.report import RunInfo, format_cost, render_markdown
from openfusion.evaluation.summary import Lift, ModelSummary

from .scenario import fixture_tasks


def summary(model: str, score: float, *, cost: float | None, reported: int = 4, **fields: object) -> ModelSummary:
    values: dict[str, object] = {
        "model": model,
        "tasks": 4,
        "score": score,
        "pass_rate": score,
        "answers": 4,
        "answer_failures": 0,
        "grader_failures": 0,
        "cost": cost,
        "cost_reported": reported if cost is not None else 0,
        "grader_cost": None,
        "latency_p50_ms": 1500.0,
        "latency_p95_ms": 42_000.0,
    }
    return ModelSummary(**(values | fields))  # type: ignore[arg-type]


INFO = RunInfo(
    data="hf:perplexity-ai/draco",
    tasks=fixture_tasks(),
    available=100,
    seed=1,
    base_url="http://127.0.0.1:8000/v1",
    grader="g",
    grader_temperature=0,
    repeats=5,
    blocked_hosts=[],
)
SUMMARIES = [
    summary("fusion/budget", 0.647, cost=None),
    summary("x/deepseek", 0.603, cost=0.20),
    summary("x/flash", 0.431, cost=0.05, reported=3, answer_failures=1, answers=3),
]
LIFT = Lift(
    model="fusion/budget",
    score=0.647,
    panel=["x/flash", "x/deepseek", "x/kimi"],
    evaluated={"x/flash": 0.431, "x/deepseek": 0.603},
    missing=["x/kimi"],
)


def test_costs_are_known_unknown_or_a_lower_bound() -> None:
    assert [format_cost(s) for s in SUMMARIES] == ["unknown", "$0.2000", "$0.0500"]  # x/flash: 3 of 3 reported
    partial = summary("x/p", 0.5, cost=0.05, reported=2)
    assert format_cost(partial) == "≥ $0.0500 (2/4 reported)"


def test_the_markdown_states_method_results_lift_and_failures() -> None:
    text = render_markdown(INFO, SUMMARIES, [LIFT])

    assert "- Data: `hf:perplexity-ai/draco`: 4 of 100 tasks (seed 1); Finance 2, Medicine 2" in text
    assert "- Leak guard: off (`--allow-leaky-hosts`)" in text
    assert "5 repeat(s) averaged" in text
    assert "| `fusion/budget` | 64.7% | 64.7% | unknown | 1.5 s | 42.0 s | 4/4 | 0 |" in text
    assert "| `fusion/budget` | 64.7% | `x/deepseek` | 60.3% | +4.4 pts | `x/kimi` |" in text
    assert "`x/flash`: 1 task(s) without an answer (scored 0)" in text
    assert "Grading cost: unknown" in text


def test_no_lift_without_panels_and_the_reason_when_listing_failed() -> None:
    failed = dataclasses.replace(INFO, panels_error="HTTP 404: not found")

    assert "No fusion model with a listed panel was evaluated." in render_markdown(INFO, SUMMARIES, [])
    assert "Not computed: the server's model list failed (HTTP 404: not found)." in render_markdown(
        failed, SUMMARIES, []
    )


def test_the_chart_is_a_png_even_with_unknown_costs(tmp_path: Path) -> None:
    path = draw_chart(tmp_path / "chart.png", SUMMARIES, [LIFT])

    from matplotlib.image import imread

    pixels = imread(path)
    assert pixels.shape[:2] == (600, 960)  # 8 x 5 inches at 120 dpi
    assert pixels.std() > 0.01  # something was drawn


def test_the_chart_copes_when_no_model_reports_a_cost(tmp_path: Path) -> None:
    free = [summary("fusion/local", 0.12, cost=None), summary("x/tiny", 0.08, cost=None)]

    path = draw_chart(tmp_path / "chart.png", free, [])

    assert path.read_bytes().startswith(b"\x89PNG")
