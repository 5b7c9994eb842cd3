"""The synthesizer's request: the client's own generation settings on top of the fused prompt."""

from __future__ import annotations

from typing import Any

from openfusion.pipeline.plan import FusionPlan
from openfusion.pipeline.prompts import Messages
from openfusion.protocol import ChatRequest

# Client fields that shape the final answer and so go to the synthesizer as given.
_CLIENT_FIELDS = (
    "temperature",
    "top_p",
    "stop",
    "seed",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "user",
    "reasoning",
)


def synthesis_body(request: ChatRequest, plan: FusionPlan, messages: Messages) -> dict[str, Any]:
    """The synthesizer call's body (model and stream flags are the upstream client's business)."""
    given = request.model_dump(exclude_none=True)
    body = {key: given[key] for key in _CLIENT_FIELDS if key in given}
    body["messages"] = messages
    body["max_completion_tokens"] = request.max_completion_tokens or request.max_tokens or plan.max_completion_tokens
    return body
