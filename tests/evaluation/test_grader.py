"""The grader's contract: messages, JSON schema, and the strict-then-lenient verdict parser."""

from __future__ import annotations

import json
import typing

import pytest

from openfusion.evaluation.dataset import Criterion
from openfusion.evaluation.grader import (
    RESPONSE_FORMAT,
    VERDICT_SCHEMA,
    Verdict,
    VerdictError,
    grader_messages,
    parse_verdict,
)

from .grading_fake import grader_fields


def test_messages_carry_the_criterion_type_query_and_response() -> None:
    error = Criterion(key="s/c3", requirement="Claims that ACME was profitable", weight=-10)
    requirement = Criterion(key="s/c1", requirement="States the revenue", weight=10)

    messages = grader_messages(criterion=error, problem="How did ACME do?", answer="ACME lost money.")

    assert [m["role"] for m in messages] == ["system", "user"]
    assert "MET" in messages[0]["content"] and "negative" in messages[0]["content"]
    user = messages[1]["content"]
    assert "<criterion_type>\nnegative\n</criterion_type>" in user
    assert "<query>\nHow did ACME do?\n</query>" in user
    assert grader_fields({"messages": messages}) == ("Claims that ACME was profitable", "ACME lost money.")
    positive = grader_messages(criterion=requirement, problem="q", answer="a")[1]["content"]
    assert "<criterion_type>\npositive\n</criterion_type>" in positive


def test_the_schema_sent_matches_the_model_that_validates() -> None:
    assert RESPONSE_FORMAT["json_schema"]["schema"] is VERDICT_SCHEMA
    statuses = typing.get_args(Verdict.model_fields["criterion_status"].annotation)
    assert VERDICT_SCHEMA["properties"]["criterion_status"]["enum"] == list(statuses)
    assert set(VERDICT_SCHEMA["required"]) == set(Verdict.model_fields)


@pytest.mark.parametrize(
    ("reply", "met", "explanation"),
    [
        (json.dumps({"criterion_status": "MET", "explanation": "states 12M"}), True, "states 12M"),
        (json.dumps({"criterion_status": "UNMET", "explanation": "absent"}), False, "absent"),
        ('```json\n{"criterion_status": "met", "explanation": "fenced"}\n```', True, "fenced"),
        (
            'Verdict: {"criterion_status": " Unmet ", "explanation": "prose around"} Hope this helps.',
            False,
            "prose around",
        ),
        ('{"criterion_status": "MET"', True, ""),  # cut off before the explanation
        ('{"criterion_status": "MET", "explanation": "x", "confidence": 0.9}', True, "x"),
    ],
)
def test_verdicts_are_read_strictly_then_leniently(reply: str, met: bool, explanation: str) -> None:
    verdict = parse_verdict(reply)

    assert (verdict.met, verdict.explanation) == (met, explanation)


@pytest.mark.parametrize(
    "reply",
    [
        None,
        "",
        "   ",
        "I cannot decide.",
        '{"criterion_status": "PARTIAL", "explanation": "half"}',
        '{"verdict": "MET"}',
    ],
)
def test_anything_else_is_a_verdict_error(reply: str | None) -> None:
    with pytest.raises(VerdictError):
        parse_verdict(reply)
