"""DRACO-format tasks: loading from a JSONL file or the Hugging Face hub, and deterministic sampling."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from openfusion.evaluation.errors import DataError, MissingDependency

HF_PREFIX = "hf:"
HF_FILENAME = "test.jsonl"  # DRACO's only split


@dataclass(frozen=True)
class Criterion:
    """One rubric line: `key` is `<section id>/<criterion id>`; a negative weight marks an error."""

    key: str
    requirement: str
    weight: float

    @property
    def negative(self) -> bool:
        """Whether MET means the answer commits the error this criterion describes."""
        return self.weight < 0


@dataclass(frozen=True)
class Task:
    """One research question with its flattened rubric."""

    id: str
    domain: str
    problem: str
    criteria: tuple[Criterion, ...]


class _CriterionRow(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    requirement: str = Field(min_length=1)
    weight: float


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    title: str = ""
    criteria: list[_CriterionRow]


class _Rubric(BaseModel):
    model_config = ConfigDict(extra="allow")

    sections: list[_Section] = Field(min_length=1)


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    domain: str = Field(min_length=1)
    problem: str = Field(min_length=1)
    answer: _Rubric

    @field_validator("answer", mode="before")
    @classmethod
    def _decode(cls, value: object) -> object:
        # DRACO stores the rubric as a JSON string inside the JSON line.
        return json.loads(value) if isinstance(value, str) else value


def parse_task(line: str) -> Task:
    """One JSONL record `{id, domain, problem, answer}` as a Task; raises ValueError if malformed."""
    record = _Record.model_validate_json(line)
    criteria: list[Criterion] = []
    for section in record.answer.sections:
        for row in section.criteria:
            criteria.append(Criterion(key=f"{section.id}/{row.id}", requirement=row.requirement, weight=row.weight))
    keys = [c.key for c in criteria]
    if duplicates := sorted({k for k in keys if keys.count(k) > 1}):
        raise ValueError(f"task {record.id}: duplicate criterion ids {duplicates}")
    if not criteria:
        raise ValueError(f"task {record.id}: the rubric has no criteria")
    return Task(id=record.id, domain=record.domain, problem=record.problem, criteria=tuple(criteria))


def read_tasks(path: Path) -> list[Task]:
    """Every task of a DRACO-format JSONL file, in file order."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    tasks: list[Task] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            tasks.append(parse_task(line))
        except (ValidationError, ValueError) as exc:
            raise DataError(f"{path}:{number}: not a DRACO record: {_describe(exc)}") from None
    ids = [t.id for t in tasks]
    if duplicates := sorted({i for i in ids if ids.count(i) > 1}):
        raise DataError(f"{path}: duplicate task ids {duplicates}")
    if not tasks:
        raise DataError(f"{path}: no tasks")
    return tasks


def download_hf(repo_id: str, *, revision: str | None = None) -> Path:
    """DRACO's `test.jsonl` from a Hugging Face dataset repo (cached by huggingface_hub)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise MissingDependency("huggingface-hub", f"loading {HF_PREFIX}{repo_id}") from None
    try:
        return Path(hf_hub_download(repo_id, HF_FILENAME, repo_type="dataset", revision=revision))
    except (OSError, ValueError) as exc:
        # LocalEntryNotFoundError (offline, not cached) and HfHubHTTPError are both OSErrors.
        raise DataError(
            f"cannot download {HF_FILENAME} of the dataset {repo_id} from Hugging Face "
            f"({type(exc).__name__}: {_first_line(exc)}). Offline? Download it elsewhere and pass "
            f"--data FILE.jsonl, or set HF_HUB_OFFLINE=1 to use a cached copy."
        ) from None


def load_tasks(source: str) -> list[Task]:
    """Tasks from `hf:OWNER/NAME[@REVISION]` or a local JSONL path."""
    if source.startswith(HF_PREFIX):
        repo, _, revision = source.removeprefix(HF_PREFIX).partition("@")
        if repo.count("/") != 1:
            raise DataError(f"{source!r}: expected hf:OWNER/NAME, e.g. hf:perplexity-ai/draco")
        return read_tasks(download_hf(repo, revision=revision or None))
    return read_tasks(Path(source))


def select_tasks(
    tasks: Sequence[Task], *, limit: int | None = None, domains: Sequence[str] = (), seed: int = 0
) -> list[Task]:
    """The tasks of `domains` (all if empty), `limit` of them drawn with `seed`, ordered by id."""
    pool = sorted(tasks, key=lambda t: t.id)  # the draw must not depend on the file's line order
    if domains:
        known = {t.domain.casefold(): t.domain for t in pool}
        unknown = [d for d in domains if d.casefold() not in known]
        if unknown:
            raise DataError(f"unknown domain(s) {unknown}; the data has: {', '.join(sorted(known.values()))}")
        wanted = {d.casefold() for d in domains}
        pool = [t for t in pool if t.domain.casefold() in wanted]
    if limit is not None and limit < len(pool):
        pool = sorted(random.Random(seed).sample(pool, limit), key=lambda t: t.id)
    return pool


def _describe(exc: ValidationError | ValueError) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        return f"{where}: {error['msg']}" if where else error["msg"]
    return str(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
