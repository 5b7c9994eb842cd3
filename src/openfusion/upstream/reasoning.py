"""OpenRouter's `reasoning` object, as each provider's `reasoning_style` takes it.

One translation for every chat call: the pipeline's own (panel, judge, synthesizer, a translated Responses or
Messages request) and a chat pass-through's, for each of its `models` fallbacks; and one for a Responses request
relayed to a provider that speaks that API, whose `reasoning` is the API's own object.

A provider that takes only an effort gets the caller's intent as one, as OpenRouter maps it for such models: a
reasoning budget (`max_tokens`) becomes the effort that spends about that share of the call's output limit (high
about 80%, medium 50%, low 20%), and `enabled: true` alone is the default effort, medium. `enabled: false` turns
reasoning off whatever else the object holds: such a provider gets no effort at all (not `none` or `minimal`, which
some models refuse; openfusion knows no model's list of efforts), so the model reasons as it does when asked nothing.
"""

from __future__ import annotations

from typing import Any

from openfusion.settings import ReasoningStyle

# OpenRouter's own keys in a `reasoning` object: OpenAI's Chat Completions and Responses APIs have none of them (the
# Responses API's object has `effort` and `summary`).
OPENROUTER_REASONING_KEYS = ("max_tokens", "exclude", "enabled")

# What `enabled: true` asks for, and a budget with no output limit to weigh it against: OpenRouter's default effort.
DEFAULT_EFFORT = "medium"
# The share of the output limit above which a reasoning budget is a high effort, then a medium one (else low): midway
# between the shares OpenRouter gives each (high ~80%, medium ~50%, low ~20%), rounded down.
_HIGH_SHARE, _MEDIUM_SHARE = 0.6, 0.3


def effort_for_budget(budget: int, output_limit: int | None) -> str:
    """The effort (low, medium or high) that spends about `budget` reasoning tokens of a call limited to
    `output_limit` tokens (unknown: the default effort). Only the three efforts every reasoning model takes: a
    budget never asks for one (minimal, xhigh) that a model may refuse."""
    if output_limit is None or output_limit <= 0:
        return DEFAULT_EFFORT
    share = budget / output_limit
    return "high" if share > _HIGH_SHARE else "medium" if share > _MEDIUM_SHARE else "low"


def intended_effort(reasoning: Any, output_limit: Any) -> str | None:
    """The effort a `reasoning` object asks for: its own, else one for its `max_tokens` budget (against
    `output_limit`, the call's max tokens), else the default one for `enabled: true`; None when it asks none (only
    `exclude`), or turns reasoning off (`enabled: false`, which wins over an effort or a budget, as at OpenRouter)."""
    if not isinstance(reasoning, dict) or turns_reasoning_off(reasoning):
        return None
    effort = reasoning.get("effort")
    if effort is not None:
        return effort if isinstance(effort, str) else None
    budget = reasoning.get("max_tokens")
    if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0:
        limit = output_limit if isinstance(output_limit, int) and not isinstance(output_limit, bool) else None
        return effort_for_budget(budget, limit)
    return DEFAULT_EFFORT if reasoning.get("enabled") is True else None


def turns_reasoning_off(reasoning: Any) -> bool:
    """Whether a `reasoning` object turns reasoning off (`enabled: false`), whatever effort or budget it also names."""
    return isinstance(reasoning, dict) and reasoning.get("enabled") is False


def send_reasoning_as(payload: dict[str, Any], style: ReasoningStyle) -> dict[str, Any]:
    """`payload` (changed in place) with its `reasoning` as a provider of `style` takes it.

    "openrouter": as is. "reasoning_effort": the effort it asks for (`intended_effort`: its own, or one for its
    `max_tokens` budget or `enabled: true`) as `reasoning_effort` (the caller's own top-level `reasoning_effort`
    wins, but for an object with `enabled: false`, which turns reasoning off and so sends no effort at all); `exclude`
    has no equivalent there and is dropped, so an object that asks no effort sends nothing (OpenAI refuses
    `reasoning_effort` from a model that does not reason: no effort is asked that the caller did not ask for).
    "none": dropped.
    """
    if style == "openrouter" or "reasoning" not in payload:
        return payload
    reasoning = payload.pop("reasoning")
    if style == "reasoning_effort" and turns_reasoning_off(reasoning):
        payload.pop("reasoning_effort", None)
        return payload
    if style == "reasoning_effort" and payload.get("reasoning_effort") is None:
        limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
        effort = intended_effort(reasoning, limit)
        if effort is not None:
            payload["reasoning_effort"] = effort
    return payload


def send_responses_reasoning_as(payload: dict[str, Any], style: ReasoningStyle) -> dict[str, Any]:
    """`payload` (a Responses request, changed in place) with its `reasoning` as a provider of `style` takes it.

    "openrouter": as is. "reasoning_effort": without OpenRouter's own keys (OpenAI refuses them: "Unknown
    parameter"), its `max_tokens` budget or `enabled: true` as the effort they ask for (`intended_effort`, against
    `max_output_tokens`), and left out when nothing else was in it; left out whole with `enabled: false` (reasoning
    off: no effort, and no summary of reasoning not asked for). "none": dropped.
    """
    if style == "openrouter" or "reasoning" not in payload:
        return payload
    reasoning = payload.pop("reasoning")
    if style == "reasoning_effort" and isinstance(reasoning, dict) and not turns_reasoning_off(reasoning):
        kept = {key: value for key, value in reasoning.items() if key not in OPENROUTER_REASONING_KEYS}
        effort = intended_effort(reasoning, payload.get("max_output_tokens"))
        if "effort" not in kept and effort is not None:
            kept["effort"] = effort
        if kept:
            payload["reasoning"] = kept
    return payload
