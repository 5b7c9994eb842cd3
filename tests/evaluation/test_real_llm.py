"""`openfusion eval` against real llama.cpp servers (SmolLM2-135M): the run completes and reports.

The numbers mean nothing with a 135M model; this proves the mechanics a fake cannot: the grader's
structured output as a real server takes it, real usage without cost, and the report and chart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes.server import serve_in_thread
from openfusion.app import create_app
from openfusion.cli import main
from openfusion.localdemo.config import write_config
from openfusion.localdemo.servers import LocalModelUnavailable, running_servers
from openfusion.settings import load_settings

from .scenario import FIXTURE

pytestmark = pytest.mark.real_llm


@pytest.fixture(scope="module")
def local_openfusion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """openfusion with the `local` preset over three llama.cpp servers; yields its /v1 base URL."""
    directory = tmp_path_factory.mktemp("eval-real")
    try:
        with running_servers(3, log_dir=directory) as servers:
            config, presets = write_config(servers, directory / "config")
            app = create_app(load_settings(config, presets_dir=presets), environ={})
            with serve_in_thread(app) as url:
                yield f"{url}/v1"
    except LocalModelUnavailable as exc:
        pytest.skip(f"real-upstream tests need the local model: {exc}")


def test_an_eval_run_against_llama_cpp_completes_with_a_report(local_openfusion: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [
        "eval", "--base-url", local_openfusion, "--models", "fusion/local,local1/smollm2",
        "--grader", "local2/smollm2", "--data", str(FIXTURE), "--domain", "Medicine", "--out", str(out),
        "--max-tokens", "200", "--grader-max-tokens", "150", "--concurrency", "2", "--grader-concurrency", "3",
        "--timeout", "300", "--yes",
    ]  # fmt: skip

    assert main(args) == 0

    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    answers = [r for r in records if r["kind"] == "answer"]
    grades = [r for r in records if r["kind"] == "grade"]
    assert len(answers) == 2 * 2  # two Medicine tasks, two models
    assert all(a.get("error") is None and a["content"] for a in answers), answers
    assert all(a["usage"]["completion_tokens"] > 0 for a in answers)
    assert len(grades) == 2 * (3 + 2)  # med-1 has 3 criteria, med-2 has 2
    # Most verdicts are real MET/UNMET answers, whatever their worth, not grader failures.
    assert sum(g.get("error") is None for g in grades) >= len(grades) // 2, [g.get("error") for g in grades]
    summary = json.loads((out / "summary.json").read_text())
    assert [m["model"] for m in summary["models"]] == ["fusion/local", "local1/smollm2"]
    assert all(m["cost"] is None and 0 <= m["score"] <= 1 for m in summary["models"])  # llama.cpp reports no cost
    (lift,) = summary["lifts"]
    assert (lift["best"], lift["missing"]) == ("local1/smollm2", ["local2/smollm2", "local3/smollm2"])
    report = (out / "report.md").read_text()
    assert "| `fusion/local` |" in report and "unknown" in report
    assert (out / "score_vs_cost.png").read_bytes().startswith(b"\x89PNG")
