"""Key scopes: which model slugs a request names, and whether the client's key covers them.

Scope is about what the client chose: the requested model, OpenRouter's `models` fallback list,
and the preset and models it names in the fusion plugin. A fusion request is checked as
`fusion/<preset it runs>` (so `fusion`, `openrouter/fusion` and `fusion/quality` are all
`fusion/quality` with the default preset); the panel, judge and synthesizer a preset brings in are
the operator's choice and are covered by allowing the preset.
"""

from __future__ import annotations

from typing import Any

from openfusion.access.errors import ModelNotAllowed
from openfusion.access.keys import Client
from openfusion.pipeline.plan import FusionPlan, fusion_plugin_index
from openfusion.presets import is_fusion_slug
from openfusion.protocol import ChatRequest

# Plugin fields that name models: the ones plan.py's recursion guard checks (a test keeps them in step).
PLUGIN_MODEL_FIELDS = ("analysis_models", "model", "synthesis_model", "judge_fallbacks", "synthesis_fallbacks")


def requested_models(chat: ChatRequest, plan: FusionPlan | None) -> list[tuple[str, str]]:
    """(param, slug) for every model the client chose, in the order they are checked."""
    named: list[tuple[str, str]] = []
    if plan is None:
        named.append(("model", chat.model))
    else:
        index = fusion_plugin_index(chat)
        plugin: dict[str, Any] = chat.plugins[index] if chat.plugins and index is not None else {}
        prefix = f"plugins[{index}]"
        preset_param = f"{prefix}.preset" if plugin.get("preset") is not None else "model"
        named.append((preset_param, f"fusion/{plan.preset}" if plan.preset else chat.model))
        if not is_fusion_slug(chat.model):  # the plugin on a plain model: that model judges and answers
            named.append(("model", chat.model))
        for field_name in PLUGIN_MODEL_FIELDS:
            named += _listed(f"{prefix}.{field_name}", plugin.get(field_name))
    # OpenRouter's `models` fallback list: each may answer instead of `model`.
    named += _listed("models", chat.models)
    return named


def _listed(param: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(param, value)]
    if isinstance(value, list):
        return [(f"{param}[{i}]", slug) for i, slug in enumerate(value) if isinstance(slug, str)]
    return []


def check_scope(client: Client, named: list[tuple[str, str]]) -> None:
    """Raise ModelNotAllowed (403) for the first named model outside the client's scope."""
    for param, slug in named:
        if not client.allows(slug):
            raise ModelNotAllowed(f"This API key ({client.name}) is not allowed to use {slug!r}.", param=param)
