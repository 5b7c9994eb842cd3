"""The results file: appended as calls complete, read back on the next run."""

from __future__ import annotations

from pathlib import Path

import pytest

from openfusion.evaluation.records import AnswerRecord, GradeRecord, ResultStore, needs_answer, needs_grade


def grade(**overrides: object) -> GradeRecord:
    values: dict[str, object] = {
        "model": "m",
        "task_id": "t",
        "answer_digest": "d",
        "criterion": "s/c1",
        "repeat": 0,
        "grader": "g",
        "met": True,
    }
    return GradeRecord.model_validate(values | overrides)


def key(record: GradeRecord) -> tuple[str, str, str, str, int, str]:
    return (record.model, record.task_id, record.answer_digest, record.criterion, record.repeat, record.grader)


def test_records_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.jsonl"
    answer = AnswerRecord(model="m", task_id="t", content="hello", latency_ms=12, cost=0.5)
    with ResultStore(path) as store:
        store.append(answer)
        store.append(grade(answer_digest=answer.digest, explanation="ok"))

    again = ResultStore(path)

    assert again.answer("m", "t") == answer
    assert again.grade(key(grade(answer_digest=answer.digest))) == grade(answer_digest=answer.digest, explanation="ok")
    assert again.answer("m", "other") is None
    assert len(path.read_text().splitlines()) == 2


def test_a_half_written_last_line_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(AnswerRecord(model="m", task_id="t", content="x").model_dump_json() + '\n{"kind": "answer", "mo')

    store = ResultStore(path)

    assert store.answer("m", "t") == AnswerRecord(model="m", task_id="t", content="x")
    assert "results.jsonl:2: unreadable record skipped" in caplog.text


def test_a_success_is_final_and_a_failure_gives_way(tmp_path: Path) -> None:
    failed = AnswerRecord(model="m", task_id="t", error="HTTP 500: boom")
    answered = AnswerRecord(model="m", task_id="t", content="x")
    with ResultStore(tmp_path / "results.jsonl") as store:
        store.append(failed)
        assert store.answer("m", "t") == failed
        store.append(answered)
        store.append(AnswerRecord(model="m", task_id="t", error="late failure"))
        assert store.answer("m", "t") == answered

        store.append(grade(error="not a verdict", met=False))
        store.append(grade(explanation="retried"))
        store.append(grade(error="late failure", met=False))
        assert store.grade(key(grade())) == grade(explanation="retried")


def test_failures_are_redone_only_when_asked() -> None:
    failed_answer = AnswerRecord(model="m", task_id="t", error="x")
    empty_answer = AnswerRecord(model="m", task_id="t", content=None)
    assert needs_answer(None, retry_failures=False)
    assert not needs_answer(failed_answer, retry_failures=False)
    assert needs_answer(failed_answer, retry_failures=True)
    assert needs_answer(empty_answer, retry_failures=True)
    assert not needs_answer(AnswerRecord(model="m", task_id="t", content="x"), retry_failures=True)
    assert needs_grade(None, retry_failures=False)
    assert not needs_grade(grade(error="x"), retry_failures=False)
    assert needs_grade(grade(error="x"), retry_failures=True)
    assert not needs_grade(grade(), retry_failures=True)


def test_grades_name_the_answer_they_judged() -> None:
    first = AnswerRecord(model="m", task_id="t", content="one answer")
    second = AnswerRecord(model="m", task_id="t", content="another answer")

    assert first.digest != second.digest
    assert first.digest == AnswerRecord(model="x", task_id="y", content="one answer").digest
