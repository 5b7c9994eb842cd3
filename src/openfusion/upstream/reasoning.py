"""OpenRouter's `reasoning` object, as each provider's `reasoning_style` takes it.

One translation for every chat call: the pipeline's own (panel, judge, synthesizer, a translated Responses or
Messages request) and a chat pass-through's, for each of its `models` fallbacks; and one for a Responses request
relayed to a provider that speaks that API, whose `reasoning` is the API's own object.
"""

from __future__ import annotations

from typing import Any

from openfusion.settings import ReasoningStyle

# OpenRouter's own keys in a `reasoning` object: OpenAI's Chat Completions and Responses APIs have none of them (the
# Responses API's object has `effort` and `summary`).
OPENROUTER_REASONING_KEYS = ("max_tokens", "exclude", "enabled")


def send_reasoning_as(payload: dict[str, Any], style: ReasoningStyle) -> dict[str, Any]:
    """`payload` (changed in place) with its `reasoning` as a provider of `style` takes it.

    "openrouter": as is. "reasoning_effort": its `effort` as `reasoning_effort` (the caller's own top-level
    `reasoning_effort` wins); its other keys (`max_tokens`, `exclude`, `enabled`) have no equivalent there and are
    dropped, so an object without an effort sends nothing (OpenAI refuses `reasoning_effort` from a model that does
    not reason: no effort is asked that the caller did not name). "none": dropped.
    """
    if style == "openrouter" or "reasoning" not in payload:
        return payload
    reasoning = payload.pop("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    if style == "reasoning_effort" and effort is not None and payload.get("reasoning_effort") is None:
        payload["reasoning_effort"] = effort
    return payload


def send_responses_reasoning_as(payload: dict[str, Any], style: ReasoningStyle) -> dict[str, Any]:
    """`payload` (a Responses request, changed in place) with its `reasoning` as a provider of `style` takes it.

    "openrouter": as is. "reasoning_effort": without OpenRouter's own keys (OpenAI refuses them: "Unknown
    parameter"), and left out when nothing else was in it. "none": dropped.
    """
    if style == "openrouter" or "reasoning" not in payload:
        return payload
    reasoning = payload.pop("reasoning")
    if style == "reasoning_effort" and isinstance(reasoning, dict):
        kept = {key: value for key, value in reasoning.items() if key not in OPENROUTER_REASONING_KEYS}
        if kept:
            payload["reasoning"] = kept
    return payload
