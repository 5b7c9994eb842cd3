"""The shape checks of an upstream answer: each field openfusion reads, of the wrong type, is named."""

from __future__ import annotations

from typing import Any

import pytest

from openfusion.upstream.shape import completion_problem


def _chunk(**delta: Any) -> dict[str, Any]:
    return {"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"model": None, "choices": None},
        {"choices": []},
        _chunk(content="hi"),
        _chunk(),
        {"choices": [{"delta": None, "finish_reason": "stop"}]},
        _chunk(content=[{"type": "text", "text": "a"}, {"type": "image"}, "odd part"], annotations=[]),
        _chunk(tool_calls=[{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{"}}]),
        _chunk(tool_calls=[{"index": 1, "function": None}]),
    ],
)
def test_well_formed_chunks_pass(data: dict[str, Any]) -> None:
    assert completion_problem(data, key="delta") is None


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"model": 3}, "model is not a string"),
        ({"choices": {}}, "choices is not a list"),
        ({"choices": ["x"]}, "a choice is not an object"),
        ({"choices": [{"finish_reason": 1}]}, "finish_reason is not a string"),
        ({"choices": [{"delta": "x"}]}, "delta is not an object"),
        (_chunk(content=[{"text": 5}]), "delta.content has a text part whose text is not a string"),
        (_chunk(annotations={}), "delta.annotations is not a list"),
        (_chunk(tool_calls={}), "delta.tool_calls is not a list"),
        (_chunk(tool_calls=[1]), "delta.tool_calls has an entry that is not an object"),
        (_chunk(tool_calls=[{"index": True}]), "delta.tool_calls[].index is not an integer"),
        (_chunk(tool_calls=[{"id": 1}]), "delta.tool_calls[] has an id or type that is not a string"),
        (_chunk(tool_calls=[{"function": []}]), "delta.tool_calls[].function is not an object"),
        (
            _chunk(tool_calls=[{"function": {"name": 1}}]),
            "delta.tool_calls[].function has a name or arguments that are not strings",
        ),
    ],
)
def test_a_field_of_the_wrong_type_is_named(data: dict[str, Any], problem: str) -> None:
    assert completion_problem(data, key="delta") == problem


def test_a_whole_completion_is_checked_under_message() -> None:
    answer = {"choices": [{"message": {"content": "ok", "tool_calls": "no"}, "finish_reason": "stop"}]}
    assert completion_problem(answer, key="message") == "message.tool_calls is not a list"
