"""The judge's JSON contract: schema, response_format and the lenient parser."""

from __future__ import annotations

import json
from typing import Any

import pytest

from openfusion.pipeline.analysis import ANALYSIS_SCHEMA, RESPONSE_FORMAT, Analysis, AnalysisError, parse_analysis

KEYS = {"consensus", "contradictions", "partial_coverage", "unique_insights", "blind_spots"}

GOOD: dict[str, Any] = {
    "consensus": ["Water boils at 100 °C at sea level."],
    "contradictions": [
        {"topic": "altitude", "stances": [{"model": "a/x", "stance": "lower"}, {"model": "b/y", "stance": "same"}]}
    ],
    "partial_coverage": [{"models": ["a/x"], "point": "pressure cookers"}],
    "unique_insights": [{"model": "b/y", "insight": "Salt raises it slightly."}],
    "blind_spots": [],
}
GOOD_JSON = json.dumps(GOOD, ensure_ascii=False)
EMPTY = {key: [] for key in KEYS}


def check_good(analysis: Analysis) -> None:
    assert analysis.model_dump() == GOOD


# --- the parser --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        GOOD_JSON,
        f"  \n{GOOD_JSON}\n  ",
        json.dumps(GOOD, indent=2, ensure_ascii=False),
        f"```json\n{GOOD_JSON}\n```",
        f"```JSON\n{GOOD_JSON}```",
        f"```\n{GOOD_JSON}\n```",
        f"Here is my analysis:\n```json\n{GOOD_JSON}\n```\nLet me know if you need more.",
        f"Here is my analysis: {GOOD_JSON} -- hope this helps!",
        f"Note {{braces}} in prose.\n```json\n{GOOD_JSON}\n```",
    ],
    ids=["plain", "whitespace", "indented", "fenced", "fenced-upper", "fenced-bare", "fenced-prose", "prose", "braces"],
)
def test_parses_json_in_its_usual_wrappers(raw: str) -> None:
    check_good(parse_analysis(raw))


@pytest.mark.parametrize(
    "raw",
    [
        '{"consensus": ["a",], "contradictions": [], "partial_coverage": [], "unique_insights": [], '
        '"blind_spots": [],}',
        'Sure: {"consensus": ["a"], "contradictions": [], "partial_coverage": [], "unique_insights": [],'
        ' "blind_spots": [],} thanks',
        "{'consensus': ['a'], 'contradictions': [], 'partial_coverage': [], 'unique_insights': [], 'blind_spots': []}",
    ],
    ids=["trailing-commas", "trailing-commas-in-prose", "single-quotes"],
)
def test_repairs_almost_json(raw: str) -> None:
    analysis = parse_analysis(raw)
    assert analysis.consensus == ["a"]
    assert analysis.blind_spots == []


@pytest.mark.parametrize(
    "raw",
    [
        f"I used the format {{key: value}} as asked. Here it is: {GOOD_JSON}",
        f"{GOOD_JSON}\n(Note: I left out {{placeholders}}.)",
    ],
    ids=["braces-before", "braces-after"],
)
def test_finds_the_json_object_among_braces_in_prose(raw: str) -> None:
    """A complete, valid JSON object in the reply is found even when the prose has braces of its own."""
    check_good(parse_analysis(raw))


def test_all_lists_may_be_empty() -> None:
    analysis = parse_analysis(json.dumps(EMPTY))
    assert analysis.model_dump() == EMPTY


@pytest.mark.parametrize("raw", ["", "   ", "\n\t\n"])
def test_empty_completion(raw: str) -> None:
    with pytest.raises(AnalysisError) as info:
        parse_analysis(raw)
    assert info.value.reason == "judge_empty_completion"


@pytest.mark.parametrize(
    "raw",
    ["I could not compare these answers.", "[1, 2, 3]", '"just a string"', "{", "{not json at all}", "42"],
)
def test_not_json(raw: str) -> None:
    with pytest.raises(AnalysisError) as info:
        parse_analysis(raw)
    assert info.value.reason == "judge_not_valid_json"
    assert info.value.detail == str(info.value)


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({}, "consensus"),
        (without("blind_spots"), "blind_spots"),
        ({**without("consensus"), "agreement": ["x"]}, "consensus"),
        ({**GOOD, "summary": "extra"}, "summary"),
        ({**GOOD, "consensus": "one string"}, "consensus"),
        ({**GOOD, "consensus": [1, 2]}, "consensus"),
        ({**GOOD, "blind_spots": None}, "blind_spots"),
        ({**GOOD, "contradictions": [{"topic": "t"}]}, "contradictions.0.stances"),
        ({**GOOD, "contradictions": [{"topic": "t", "stances": [{"model": "a"}]}]}, "stance"),
        ({**GOOD, "unique_insights": [{"model": "a", "insight": "i", "score": 3}]}, "score"),
        ({**GOOD, "partial_coverage": [{"models": "a/x", "point": "p"}]}, "partial_coverage.0.models"),
    ],
)
def test_schema_mismatch(data: dict[str, Any], names: str) -> None:
    with pytest.raises(AnalysisError) as info:
        parse_analysis(json.dumps(data))
    assert info.value.reason == "judge_schema_mismatch"
    assert names in info.value.detail


def test_schema_mismatch_in_fenced_json() -> None:
    with pytest.raises(AnalysisError) as info:
        parse_analysis('```json\n{"consensus": []}\n```')
    assert info.value.reason == "judge_schema_mismatch"


# --- the schema sent to the judge --------------------------------------------------------------------


def test_schema_has_exactly_the_five_required_keys() -> None:
    assert ANALYSIS_SCHEMA["type"] == "object"
    assert set(ANALYSIS_SCHEMA["properties"]) == KEYS
    assert sorted(ANALYSIS_SCHEMA["required"]) == sorted(KEYS)
    assert len(ANALYSIS_SCHEMA["required"]) == 5


def objects(schema: Any) -> list[dict[str, Any]]:
    """Every object schema nested anywhere inside `schema`."""
    found: list[dict[str, Any]] = []
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            found.append(schema)
        for value in schema.values():
            found.extend(objects(value))
    elif isinstance(schema, list):
        for value in schema:
            found.extend(objects(value))
    return found


def test_every_object_is_closed_and_fully_required() -> None:
    found = objects(ANALYSIS_SCHEMA)
    # root, contradiction, stance, partial coverage, unique insight
    assert len(found) == 5
    for schema in found:
        assert schema["additionalProperties"] is False
        assert set(schema["required"]) == set(schema["properties"])


def test_schema_matches_the_pydantic_model() -> None:
    """The hand-written schema and the parser agree on field names at every level."""
    props = ANALYSIS_SCHEMA["properties"]
    assert set(props) == set(Analysis.model_fields)
    contradiction = props["contradictions"]["items"]
    assert set(contradiction["properties"]) == {"topic", "stances"}
    assert set(contradiction["properties"]["stances"]["items"]["properties"]) == {"model", "stance"}
    assert set(props["partial_coverage"]["items"]["properties"]) == {"models", "point"}
    assert set(props["unique_insights"]["items"]["properties"]) == {"model", "insight"}
    for key in ("consensus", "blind_spots"):
        assert props[key] == {"type": "array", "items": {"type": "string"}}


def test_response_format_shape() -> None:
    assert RESPONSE_FORMAT["type"] == "json_schema"
    inner = RESPONSE_FORMAT["json_schema"]
    assert inner["name"] == "fusion_analysis"
    assert inner["strict"] is True
    assert inner["schema"] is ANALYSIS_SCHEMA
    json.dumps(RESPONSE_FORMAT)  # serialisable as is
