"""The shape the pipeline relies on in an upstream answer: a field of the wrong type is a protocol error, not a crash.

Only what openfusion itself reads is checked (choices, messages and deltas, tool calls, annotations,
text parts, model, finish_reason); everything else is the client's business and passes as is.
Missing fields and nulls are fine: providers leave out much of the format.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def completion_problem(data: Mapping[str, Any], *, key: str) -> str | None:
    """What is wrong with a completion (key="message") or a streamed chunk (key="delta"), or None.

    Runs on every streamed chunk: the checks are written out (no helper per field), which halves their cost.
    """
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        return "model is not a string"
    choices = data.get("choices")
    if choices is None:
        return None
    if not isinstance(choices, list):
        return "choices is not a list"
    for choice in choices:
        if not isinstance(choice, dict):
            return "a choice is not an object"
        reason = choice.get("finish_reason")
        if reason is not None and not isinstance(reason, str):
            return "finish_reason is not a string"
        message = choice.get(key)
        if message is None:
            continue
        if not isinstance(message, dict):
            return f"{key} is not an object"
        problem = _message_problem(message)
        if problem:
            return f"{key}.{problem}"
    return None


def _message_problem(message: Mapping[str, Any]) -> str | None:
    content = message.get("content")
    # (Text first: an isinstance that fails costs a lookup of the value's `__class__`, and this runs per token.)
    parts = content is not None and type(content) is not str and isinstance(content, list)
    if parts and not all(_optional(p.get("text"), str) for p in content if isinstance(p, dict)):
        return "content has a text part whose text is not a string"
    annotations = message.get("annotations")
    if annotations is not None and not isinstance(annotations, list):
        return "annotations is not a list"
    calls = message.get("tool_calls")
    if calls is None:
        return None
    if not isinstance(calls, list):
        return "tool_calls is not a list"
    for call in calls:
        if not isinstance(call, dict):
            return "tool_calls has an entry that is not an object"
        index = call.get("index")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
            return "tool_calls[].index is not an integer"
        if not (_optional(call.get("id"), str) and _optional(call.get("type"), str)):
            return "tool_calls[] has an id or type that is not a string"
        function = call.get("function")
        if not _optional(function, dict):
            return "tool_calls[].function is not an object"
        if function and not (_optional(function.get("name"), str) and _optional(function.get("arguments"), str)):
            return "tool_calls[].function has a name or arguments that are not strings"
    return None


def _optional(value: Any, kind: type) -> bool:
    return value is None or isinstance(value, kind)
