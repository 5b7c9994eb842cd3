"""The per-criterion grader's contract: prompt, JSON schema, and a strict-then-lenient verdict parser."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any, Literal

import json_repair
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from openfusion.evaluation.dataset import Criterion

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "criterion_status": {"type": "string", "enum": ["MET", "UNMET"]},
        "explanation": {"type": "string"},
    },
    "required": ["criterion_status", "explanation"],
    "additionalProperties": False,
}
RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "criterion_verdict", "strict": True, "schema": VERDICT_SCHEMA},
}


class Verdict(BaseModel):
    """The grader's answer for one criterion."""

    model_config = ConfigDict(extra="ignore")

    criterion_status: Literal["MET", "UNMET"]
    explanation: str = ""

    @property
    def met(self) -> bool:
        """Whether the described thing is present (for a negative criterion: the error is made)."""
        return self.criterion_status == "MET"


class _LenientVerdict(Verdict):
    @field_validator("criterion_status", mode="before")
    @classmethod
    def _normalise(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value


class VerdictError(ValueError):
    """The grader's reply is not a verdict, even read leniently."""


@cache
def system_prompt() -> str:
    """The grader's instructions (package data)."""
    return resources.files("openfusion.evaluation").joinpath("grader_prompt.md").read_text(encoding="utf-8")


def grader_messages(*, criterion: Criterion, problem: str, answer: str) -> list[dict[str, str]]:
    """The chat messages that ask the grader about one criterion of one answer."""
    kind = "negative" if criterion.negative else "positive"
    user = (
        f"<criterion_type>\n{kind}\n</criterion_type>\n\n"
        f"<criterion>\n{criterion.requirement}\n</criterion>\n\n"
        f"<query>\n{problem}\n</query>\n\n"
        f"<response>\n{answer}\n</response>"
    )
    return [{"role": "system", "content": system_prompt()}, {"role": "user", "content": user}]


def parse_verdict(text: str | None) -> Verdict:
    """The verdict in a grader reply: schema-valid JSON, else repaired JSON (fences, prose, case)."""
    if not text or not text.strip():
        raise VerdictError("the grader returned no content")
    try:
        return Verdict.model_validate_json(text)
    except ValidationError:
        pass
    repaired = json_repair.loads(text)
    if isinstance(repaired, list):  # several objects: take the first that is one
        repaired = next((item for item in repaired if isinstance(item, dict)), None)
    if isinstance(repaired, dict):
        try:
            return _LenientVerdict.model_validate(repaired)
        except ValidationError:
            pass
    snippet = " ".join(text.split())[:160]
    raise VerdictError(f"not a MET/UNMET verdict: {snippet!r}")
