"""The `eval` command's guard rails: confirmation, dry run, bad arguments, missing optional packages."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from openfusion.cli import _parser, main
from openfusion.evaluation.command import run_eval

from .grading_fake import GradingUpstream
from .scenario import FIXTURE

UNREACHABLE = "http://127.0.0.1:9/v1"  # the discard port: nothing listens


class Terminal(io.StringIO):
    """A stdin that says it is a terminal, with the user's typed answer."""

    def isatty(self) -> bool:
        return True


def eval_args(url: str, out: Path, *extra: str) -> list[str]:
    base = ["eval", "--base-url", url, "--models", "fusion/trio,fake/a", "--grader", "fake/grader"]
    return [*base, "--data", str(FIXTURE), "--out", str(out), *extra]


def test_a_dry_run_prints_the_estimate_and_calls_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = eval_args(UNREACHABLE, tmp_path / "out", "--dry-run", "--limit", "2", "--domain", "Medicine")

    assert main(args) == 0

    out = capsys.readouterr().out
    assert "2 task(s) of 4 x 2 model(s)" in out
    assert "4 answer calls + 10 grader calls = 14 calls" in out  # med-1 has 3 criteria, med-2 2; two models
    assert not (tmp_path / "out").exists()


def test_declining_at_the_prompt_runs_nothing(
    fake: GradingUpstream, openfusion_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _parser().parse_args(eval_args(openfusion_url, tmp_path / "out"))
    stdout = io.StringIO()

    assert run_eval(args, stdin=Terminal("n\n"), stdout=stdout) == 1

    assert "Run these calls? [y/N]" in stdout.getvalue()
    assert fake.calls == []


def test_accepting_at_the_prompt_runs_the_evaluation(
    fake: GradingUpstream, openfusion_url: str, tmp_path: Path
) -> None:
    args = _parser().parse_args(eval_args(openfusion_url, tmp_path / "out", "--limit", "1", "--domain", "medicine"))

    assert run_eval(args, stdin=Terminal("y\n"), stdout=io.StringIO()) == 0

    # One task of Medicine (seed 0), answered by fusion and by a, every criterion graded.
    assert len(fake.calls_for("synth")) == 1
    assert (tmp_path / "out" / "report.md").exists()


def test_an_unreachable_server_is_reported_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(eval_args(UNREACHABLE, tmp_path / "out", "--yes", "--max-retries", "0")) == 2

    err = capsys.readouterr().err
    assert f"cannot reach openfusion at {UNREACHABLE}" in err
    assert "Traceback" not in err


def test_the_client_key_comes_from_the_named_variable_and_is_never_printed(
    fake: GradingUpstream,
    openfusion_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MY_EVAL_KEY", "sk-eval-secret")
    args = eval_args(openfusion_url, tmp_path / "out", "--yes", "--api-key-env", "MY_EVAL_KEY", "--limit", "1")

    assert main(args) == 0

    captured = capsys.readouterr()
    assert "sk-eval-secret" not in captured.out + captured.err
    assert "sk-eval-secret" not in (tmp_path / "out" / "results.jsonl").read_text()
    assert "sk-eval-secret" not in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--price-per-call", "fusion/trio=cheap"], "--price-per-call 'fusion/trio=cheap'"),
        (["--domain", "Law"], "unknown domain(s) ['Law']"),
    ],
)
def test_bad_values_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(eval_args(UNREACHABLE, tmp_path / "out", "--dry-run", *extra)) == 2

    assert message in capsys.readouterr().err


def test_a_missing_optional_package_is_named_before_any_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail

    assert main(eval_args(UNREACHABLE, tmp_path / "out", "--yes")) == 2

    err = capsys.readouterr().err
    assert "matplotlib is needed for the score-vs-cost chart" in err
    assert "pip install 'openfusion[eval]'" in err


def test_counts_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(eval_args(UNREACHABLE, Path("out"), "--repeats", "0"))

    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_serve_never_imports_the_optional_evaluation_packages() -> None:
    import subprocess

    # Not rich: httpx imports it for its own command line whenever it is installed.
    code = "import sys, openfusion.cli; print(sorted({'openai', 'matplotlib', 'huggingface_hub'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)

    assert done.stdout.strip() == "[]"
