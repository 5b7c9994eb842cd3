"""Request guards: message count, panel size and token limits, refused with 400 naming the field."""

from __future__ import annotations

from openfusion.access.config import GuardsConfig
from openfusion.errors import InvalidRequest
from openfusion.pipeline.plan import FusionPlan, fusion_plugin_index
from openfusion.protocol import ChatRequest


def check_guards(guards: GuardsConfig, *, chat: ChatRequest, plan: FusionPlan | None) -> None:
    """Raise InvalidRequest for the first value over a configured guard."""
    if guards.max_messages is not None and len(chat.messages) > guards.max_messages:
        raise InvalidRequest(
            f"Too many messages: {len(chat.messages)} (this server accepts at most {guards.max_messages}).",
            param="messages",
        )
    index = fusion_plugin_index(chat)
    plugin = chat.plugins[index] if chat.plugins and index is not None else {}
    if guards.max_tokens is not None:
        values = [(name, getattr(chat, name)) for name in ("max_tokens", "max_completion_tokens")]
        values.append((f"plugins[{index}].max_completion_tokens", plugin.get("max_completion_tokens")))
        for param, value in values:
            if isinstance(value, int) and value > guards.max_tokens:
                raise InvalidRequest(
                    f"Invalid value for '{param}': {value} is over this server's limit of {guards.max_tokens}.",
                    param=param,
                )
    if plan is not None and len(plan.panel) > guards.max_panel_size:
        param = f"plugins[{index}].analysis_models" if plugin.get("analysis_models") else "model"
        raise InvalidRequest(
            f"Invalid value for '{param}': a panel of {len(plan.panel)} models is over this server's limit "
            f"of {guards.max_panel_size}.",
            param=param,
        )
