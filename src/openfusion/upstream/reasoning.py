"""OpenRouter's `reasoning` object, as each provider's `reasoning_style` takes it in a chat completion.

One translation for every chat call: the pipeline's own (panel, judge, synthesizer, a translated Responses or
Messages request) and a chat pass-through's, for each of its `models` fallbacks.
"""

from __future__ import annotations

from typing import Any

from openfusion.settings import ReasoningStyle


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
