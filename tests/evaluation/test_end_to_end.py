"""`openfusion eval` end to end: the CLI against the real openfusion under uvicorn and a scripted upstream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fakes.upstream import Script
from openfusion.cli import main

from .grading_fake import GradingUpstream
from .scenario import FIXTURE, GRADER_COST

pytestmark = pytest.mark.e2e

MODELS = "fusion/trio,fake/a,fake/b"

# Hand-computed from data/draco_mini.jsonl and scenario.MET (Σ positive: fin-1 20, fin-2 9, med-1 30;
# med-2 is all-negative with Σ|neg| 40):
#   fused  fin-1 20/20 = 1      fin-2 6/9          med-1 20/30         med-2 1 - 10/40 = 0.75
#   a      fin-1 (10-10)/20 = 0 fin-2 (6+3-5)/9    med-1 10/30         med-2 1 (no error)
#   b      fin-1 15/20 = 0.75   fin-2 3/9 (c1: grader failure = UNMET) med-1 30-50 -> 0   med-2 1 - 40/40 = 0
# Pass rates (passed criteria / criteria):
#   fused  4/4, 2/3, 2/3, 1/2     a  1/4, 2/3, 2/3, 2/2     b  3/4, 2/3, 2/3, 0/2
FUSED_SCORE = (1 + 6 / 9 + 20 / 30 + 0.75) / 4  # 0.7708
A_SCORE = (0 + 4 / 9 + 10 / 30 + 1) / 4  # 0.4444
B_SCORE = (0.75 + 3 / 9 + 0 + 0) / 4  # 0.2708
FUSED_PASS = (1 + 2 / 3 + 2 / 3 + 1 / 2) / 4  # 0.7083
A_PASS = (1 / 4 + 2 / 3 + 2 / 3 + 1) / 4  # 0.6458
B_PASS = (3 / 4 + 2 / 3 + 2 / 3 + 0) / 4  # 0.5208
CRITERIA = 12  # over the four tasks


def run_eval(url: str, out: Path, *extra: str) -> int:
    args = ["eval", "--base-url", url, "--models", MODELS, "--data", str(FIXTURE), "--grader", "fake/grader"]
    return main([*args, "--out", str(out), *extra])


def summary(out: Path) -> dict[str, Any]:
    data = json.loads((out / "summary.json").read_text())
    return {"models": {m["model"]: m for m in data["models"]}, "lifts": data["lifts"]}


def results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_a_run_grades_every_criterion_and_reports_the_hand_computed_numbers(
    fake: GradingUpstream, openfusion_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"

    assert run_eval(openfusion_url, out, "--yes") == 0

    models = summary(out)["models"]
    for model, score, rate in (
        ("fusion/trio", FUSED_SCORE, FUSED_PASS),
        ("fake/a", A_SCORE, A_PASS),
        ("fake/b", B_SCORE, B_PASS),
    ):
        assert models[model]["score"] == pytest.approx(score), model
        assert models[model]["pass_rate"] == pytest.approx(rate), model
    # Costs are the upstreams' usage.cost: a fusion answer sums a, b, c, judge and synth (0.15).
    assert models["fusion/trio"]["cost"] == pytest.approx(4 * 0.15)
    assert models["fake/a"]["cost"] == pytest.approx(4 * 0.01)
    assert models["fake/b"]["cost"] == pytest.approx(4 * 0.02)
    assert [models[m]["grader_failures"] for m in ("fusion/trio", "fake/a", "fake/b")] == [0, 0, 1]
    assert all(models[m]["latency_p50_ms"] is not None for m in models)
    (lift,) = summary(out)["lifts"]
    assert (lift["model"], lift["best"], lift["missing"]) == ("fusion/trio", "fake/a", ["fake/c"])
    assert lift["lift_points"] == pytest.approx((FUSED_SCORE - A_SCORE) * 100)

    report = (out / "report.md").read_text()
    assert "| `fusion/trio` | 77.1% | 70.8% | $0.6000 |" in report
    assert "| `fake/a` | 44.4% | 64.6% | $0.0400 |" in report
    assert "| `fake/b` | 27.1% | 52.1% | $0.0800 |" in report
    assert "| `fusion/trio` | 77.1% | `fake/a` | 44.4% | +32.6 pts | `fake/c` |" in report
    assert "| Finance | 83.3% | 22.2% | 54.2% |" in report  # fused (1 + 6/9)/2, a (0 + 4/9)/2, b (0.75 + 3/9)/2
    assert "| Medicine | 70.8% | 66.7% | 0.0% |" in report
    assert "`fake/b`: 1 grader failure(s) (counted as UNMET)" in report
    assert f"Grading cost: ${3 * CRITERIA * GRADER_COST:.4f}" in report
    assert "![score vs cost](score_vs_cost.png)" in report
    chart = (out / "score_vs_cost.png").read_bytes()
    assert chart.startswith(b"\x89PNG\r\n\x1a\n") and len(chart) > 10_000

    # One grader call per criterion per model; answers: fusion fans out to a, b and c.
    assert len(fake.calls_for("grader")) == 3 * CRITERIA
    assert [len(fake.calls_for(m)) for m in ("a", "b", "c", "judge", "synth")] == [8, 8, 4, 4, 4]
    grader_body = fake.calls_for("grader")[0].body
    assert grader_body["response_format"]["type"] == "json_schema"
    assert grader_body["temperature"] == 0
    assert grader_body["max_tokens"] == 2048  # bounded by default: a rambling grader fails one grade, cheaply
    kinds = [r["kind"] for r in results(out)]
    assert (kinds.count("answer"), kinds.count("grade")) == (3 * 4, 3 * CRITERIA)


def test_a_second_run_makes_no_call_and_rebuilds_the_same_report(
    fake: GradingUpstream, openfusion_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert run_eval(openfusion_url, out, "--yes") == 0
    calls = len(fake.calls)
    first = summary(out)
    capsys.readouterr()

    # No --yes: with nothing left to call there is nothing to confirm.
    assert run_eval(openfusion_url, out) == 0

    assert len(fake.calls) == calls
    assert "nothing left to call" in capsys.readouterr().out
    assert summary(out) == first
    assert len(results(out)) == 3 * 4 + 3 * CRITERIA


def test_a_resumed_run_makes_only_the_missing_calls(fake: GradingUpstream, openfusion_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_eval(openfusion_url, out, "--yes") == 0
    # As if interrupted: a's answer to med-2 (and so its grades) and every grade of b never got written.
    kept = [
        r
        for r in results(out)
        if (r["model"], r["task_id"]) != ("fake/a", "med-2") and not (r["kind"] == "grade" and r["model"] == "fake/b")
    ]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"kind": "gra')
    before = {m: len(fake.calls_for(m)) for m in ("a", "b", "grader", "synth")}

    assert run_eval(openfusion_url, out, "--yes") == 0

    after = {m: len(fake.calls_for(m)) for m in before}
    # a answers med-2 again (2 criteria to grade); b's 12 grades are redone; nothing else.
    assert {m: after[m] - before[m] for m in before} == {"a": 1, "b": 0, "grader": 2 + CRITERIA, "synth": 0}
    models = summary(out)["models"]
    assert models["fake/a"]["score"] == pytest.approx(A_SCORE)
    assert models["fake/b"]["score"] == pytest.approx(B_SCORE)


def test_failed_answers_score_zero_and_are_retried_on_request(
    fake: GradingUpstream, openfusion_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    fake.script("b", Script(status=400, error_message="b refuses"))

    assert run_eval(openfusion_url, out, "--yes") == 0

    models = summary(out)["models"]
    assert (models["fake/b"]["answers"], models["fake/b"]["answer_failures"], models["fake/b"]["score"]) == (0, 4, 0)
    assert models["fake/b"]["cost"] is None
    # Inside fusion, b's failure drops it from the panel; the fused answer is still graded as before.
    assert (models["fusion/trio"]["panel_failures"], models["fusion/trio"]["panel_calls"]) == (4, 12)
    assert models["fusion/trio"]["score"] == pytest.approx(FUSED_SCORE)
    report = (out / "report.md").read_text()
    assert "| `fake/b` | 0.0% | 0.0% | unknown |" in report
    assert "`fake/b`: 4 task(s) without an answer (scored 0)" in report
    assert "`fusion/trio`: 4 of 12 panel calls failed inside fusion" in report

    fake.script("b", Script(content="B-ANSWER", cost=0.02))
    calls = len(fake.calls)
    assert run_eval(openfusion_url, out, "--yes") == 0
    assert len(fake.calls) == calls  # a plain re-run keeps what is recorded, failures included

    before = {m: len(fake.calls_for(m)) for m in ("a", "b", "synth", "grader")}
    assert run_eval(openfusion_url, out, "--yes", "--retry-failures") == 0

    # Only b's four answers and their twelve grades are redone (b's grader failure on fin-2 is new).
    after = {m: len(fake.calls_for(m)) for m in before}
    assert {m: after[m] - before[m] for m in before} == {"a": 0, "b": 4, "synth": 0, "grader": CRITERIA}
    assert summary(out)["models"]["fake/b"]["score"] == pytest.approx(B_SCORE)


def test_without_a_terminal_it_runs_only_with_yes(
    fake: GradingUpstream, openfusion_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"

    assert run_eval(openfusion_url, out) == 2  # pytest's stdin is not a TTY

    captured = capsys.readouterr()
    assert "pass --yes" in captured.err
    assert f"= {3 * 4 + 3 * CRITERIA} calls" in captured.out
    assert fake.calls == []
    assert not (out / "results.jsonl").exists()
