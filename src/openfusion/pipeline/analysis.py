"""The judge's JSON contract: the five-section analysis, its JSON schema, and a lenient parser."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import json_repair
import orjson
from pydantic import BaseModel, ConfigDict, ValidationError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Stance(_Strict):
    model: str
    stance: str


class Contradiction(_Strict):
    topic: str
    stances: list[Stance]


class PartialCoverage(_Strict):
    models: list[str]
    point: str


class UniqueInsight(_Strict):
    model: str
    insight: str


class Analysis(_Strict):
    """What the judge found across the panel's answers."""

    consensus: list[str]
    contradictions: list[Contradiction]
    partial_coverage: list[PartialCoverage]
    unique_insights: list[UniqueInsight]
    blind_spots: list[str]


def _obj(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


_STR = {"type": "string"}
_STRS = {"type": "array", "items": _STR}

ANALYSIS_SCHEMA: dict[str, Any] = _obj(
    {
        "consensus": _STRS,
        "contradictions": {
            "type": "array",
            "items": _obj(
                {"topic": _STR, "stances": {"type": "array", "items": _obj({"model": _STR, "stance": _STR})}}
            ),
        },
        "partial_coverage": {"type": "array", "items": _obj({"models": _STRS, "point": _STR})},
        "unique_insights": {"type": "array", "items": _obj({"model": _STR, "insight": _STR})},
        "blind_spots": _STRS,
    }
)

RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "fusion_analysis", "strict": True, "schema": ANALYSIS_SCHEMA},
}


class AnalysisError(Exception):
    """The judge's reply is not a valid analysis; `reason` is the fusion failure reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def parse_analysis(raw: str) -> Analysis:
    """Parse a judge reply: JSON, fenced JSON, or JSON inside prose; then validate it strictly."""
    text = raw.strip()
    if not text:
        raise AnalysisError("judge_empty_completion", "the judge returned an empty completion")
    data = _extract_object(text)
    if data is None:
        raise AnalysisError("judge_not_valid_json", "the reply does not contain a JSON object")
    try:
        return Analysis.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(root)'}: {error['msg']}" for error in exc.errors()
        )
        raise AnalysisError("judge_schema_mismatch", f"the JSON does not match the schema: {problems}") from None


_DECODER = json.JSONDecoder()


def _candidates(text: str, start: int, end: int) -> Iterator[str]:
    """The reply whole, then each fenced block, then its outermost braces; made one at a time, since the
    first usually parses (a judge held to a JSON schema replies with the object alone)."""
    yield text
    for match in _FENCE.finditer(text):
        yield match.group(1)
    if 0 <= start < end:
        yield text[start : end + 1]


def _extract_object(text: str) -> dict[str, Any] | None:
    start, end = text.find("{"), text.rfind("}")
    for candidate in _candidates(text, start, end):
        try:
            data = orjson.loads(candidate)
        except orjson.JSONDecodeError:
            continue
        if isinstance(data, dict):
            return data
    # Prose with braces of its own: the first embedded object that carries analysis keys.
    for match in re.finditer(r"\{", text):
        try:
            data, _ = _DECODER.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and data.keys() & Analysis.model_fields.keys():
            return data
    # Last resort: a repair pass over the outermost braces (trailing commas, single quotes, cut-off JSON).
    if start >= 0:
        repaired = json_repair.loads(text[start:])
        if isinstance(repaired, dict) and repaired:
            return repaired
    return None
