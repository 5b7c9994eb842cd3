"""Before a fusion run spends anything: its worst-case cost, and the `max_cost` check."""

from __future__ import annotations

import dataclasses
import math

import orjson

from openfusion.activity.cost import PriceTable, worst_case_cost
from openfusion.errors import CostLimitExceeded
from openfusion.pipeline.plan import FusionPlan
from openfusion.protocol import ChatRequest

# Tokens per character of JSON, rounded up: English prose runs about 1 token per 4 characters, so
# 1 per 3 over-counts, which is the right side to err on for a worst case.
_CHARS_PER_TOKEN = 3


def prompt_tokens_upper_bound(request: ChatRequest) -> int:
    """A generous estimate of the conversation's size in tokens."""
    messages = [message.model_dump(exclude_unset=True) for message in request.messages]
    return math.ceil(len(orjson.dumps(messages)) / _CHARS_PER_TOKEN)


def priced(plan: FusionPlan, request: ChatRequest, prices: PriceTable) -> FusionPlan:
    """The plan with its worst-case cost; raises CostLimitExceeded (402) when that is above `max_cost`."""
    synthesizer_tokens = request.max_completion_tokens or request.max_tokens
    estimate = worst_case_cost(
        plan, prices, prompt_tokens=prompt_tokens_upper_bound(request), synthesizer_max_tokens=synthesizer_tokens
    )
    if plan.max_cost is not None:
        if estimate is None:
            unknown = sorted({m for m in [*plan.panel, plan.judge, plan.synthesizer] if prices.price_of(m) is None})
            raise CostLimitExceeded(
                f"max_cost is set but the worst-case cost cannot be bounded: no price is known for "
                f"{', '.join(unknown)}. Add them under [pricing.models] or set pricing.refresh_from.",
                param=f"{plan.config_param}.max_cost",
            )
        if estimate > plan.max_cost:
            raise CostLimitExceeded(
                f"The worst-case cost of this fusion request is ${estimate:.4f}, above max_cost "
                f"${plan.max_cost:.4f}: nothing was sent. Lower max_tool_calls or max_completion_tokens, "
                "use a smaller panel, or raise max_cost.",
                param=f"{plan.config_param}.max_cost",
            )
    return dataclasses.replace(plan, estimated_max_cost=estimate)
