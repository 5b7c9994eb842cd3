"""The results file: one JSON line per answer and per grade, appended as each completes."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import IO, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

log = logging.getLogger("openfusion.eval")


class AnswerRecord(BaseModel):
    """One model's answer to one task (or why there is none)."""

    model_config = ConfigDict(extra="allow")

    kind: Literal["answer"] = "answer"
    model: str
    task_id: str
    content: str | None = None
    error: str | None = None
    latency_ms: int = 0
    cost: float | None = None
    usage: dict[str, Any] | None = None
    panel: list[dict[str, Any]] | None = None  # fusion only: each member's model and status

    @property
    def ok(self) -> bool:
        """Whether there is an answer to grade."""
        return self.error is None and self.content is not None

    @property
    def digest(self) -> str:
        """Short hash of the content: grades name the exact answer they judged."""
        return hashlib.sha256((self.content or "").encode()).hexdigest()[:16]


class GradeRecord(BaseModel):
    """The grader's verdict on one criterion of one answer, in one repeat."""

    model_config = ConfigDict(extra="allow")

    kind: Literal["grade"] = "grade"
    model: str
    task_id: str
    answer_digest: str
    criterion: str
    repeat: int
    grader: str
    met: bool = False
    explanation: str = ""
    error: str | None = None  # a grader failure: counted as UNMET and reported
    cost: float | None = None


Record = AnswerRecord | GradeRecord
_RECORD: TypeAdapter[Record] = TypeAdapter(Annotated[Record, Field(discriminator="kind")])

GradeKey = tuple[str, str, str, str, int, str]


def grade_key(record: GradeRecord) -> GradeKey:
    """What makes a grade unique: model, task, answer, criterion, repeat and grader."""
    return (record.model, record.task_id, record.answer_digest, record.criterion, record.repeat, record.grader)


def needs_answer(record: AnswerRecord | None, *, retry_failures: bool) -> bool:
    """Whether an answer is still to be asked for: missing, or failed and failures are retried."""
    return record is None or (retry_failures and not record.ok)


def needs_grade(record: GradeRecord | None, *, retry_failures: bool) -> bool:
    """Whether a grade is still to be asked for: missing, or failed and failures are retried."""
    return record is None or (retry_failures and record.error is not None)


class ResultStore:
    """The results JSONL: read on open, appended (and flushed) one record at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._answers: dict[tuple[str, str], AnswerRecord] = {}
        self._grades: dict[GradeKey, GradeRecord] = {}
        self._file: IO[str] | None = None
        if path.exists():
            self._read()

    def _read(self) -> None:
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = _RECORD.validate_json(line)
            except ValidationError:
                # An interrupted run can leave a half-written last line; that call is simply redone.
                log.warning("%s:%d: unreadable record skipped", self.path, number)
                continue
            self._remember(record)

    def _remember(self, record: Record) -> None:
        # A success is final; a failure gives way to the next attempt (a --retry-failures run).
        if isinstance(record, AnswerRecord):
            known = self._answers.get((record.model, record.task_id))
            if known is None or not known.ok:
                self._answers[(record.model, record.task_id)] = record
        else:
            known_grade = self._grades.get(grade_key(record))
            if known_grade is None or known_grade.error is not None:
                self._grades[grade_key(record)] = record

    def answer(self, model: str, task_id: str) -> AnswerRecord | None:
        """The recorded answer of `model` to `task_id`, if any (possibly a failure)."""
        return self._answers.get((model, task_id))

    def grade(self, key: GradeKey) -> GradeRecord | None:
        """The recorded grade under `key`, if any (possibly a failure)."""
        return self._grades.get(key)

    def append(self, record: Record) -> None:
        """Write one record to the file at once, so an interrupted run keeps it."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(record.model_dump_json(exclude_none=True) + "\n")
        self._file.flush()
        self._remember(record)

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
