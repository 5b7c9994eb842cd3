"""Request guards: message count, panel size and token limits, refused with 400 naming the field."""

from __future__ import annotations

from openfusion.access.config import GuardsConfig
from openfusion.errors import InvalidRequest
from openfusion.pipeline.plan import FusionPlan
from openfusion.pipeline.reach import Reach
from openfusion.protocol import ChatRequest


def check_guards(guards: GuardsConfig, *, chat: ChatRequest, plan: FusionPlan | None, reach: Reach) -> None:
    """Raise InvalidRequest for the first value over a configured guard.

    Token limits are checked wherever the request sets one (top level, the fusion plugin, the fusion
    server tool's parameters, `reasoning.max_tokens`), the panel size in every fusion mode.
    """
    if guards.max_messages is not None and len(chat.messages) > guards.max_messages:
        raise InvalidRequest(
            f"Too many messages: {len(chat.messages)} (this server accepts at most {guards.max_messages}).",
            param="messages",
        )
    if guards.max_tokens is not None:
        for param, value in reach.token_limits:
            if value > guards.max_tokens:
                raise InvalidRequest(
                    f"Invalid value for '{param}': {value} is over this server's limit of {guards.max_tokens}.",
                    param=param,
                )
    if plan is not None and len(plan.panel) > guards.max_panel_size:
        param = reach.panel_param
        raise InvalidRequest(
            f"Invalid value for '{param}': a panel of {len(plan.panel)} models is over this server's limit "
            f"of {guards.max_panel_size}.",
            param=param,
        )
