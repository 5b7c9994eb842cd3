"""What a request can make openfusion do upstream: every model it can call, and every token limit it sets.

One place for scope, guards and the worst-case cost to agree on. Each model carries the request
field that named it and whether the client chose it or the operator's preset brought it in, so
the scope checks exactly the client's choices and the estimate covers every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from openfusion.pipeline.plan import FusionPlan, fusion_plugin_index, fusion_tool_index
from openfusion.presets import is_fusion_slug
from openfusion.protocol import ChatRequest

Role = Literal["passthrough", "panel", "judge", "synthesizer", "outer"]

# The request's own fields that cap a call's output, and the plugin's (or the server tool's) ones.
_TOP_LEVEL_LIMITS = ("max_tokens", "max_completion_tokens")
_CONFIG_LIMITS = ("max_completion_tokens",)


@dataclass(frozen=True)
class ModelUse:
    """One model a request can call, and who chose it."""

    slug: str
    role: Role
    param: str  # the request field that named it; "model" for a model the preset brought in
    chosen: bool  # named by the client; False: brought in by the operator's preset


@dataclass(frozen=True)
class Reach:
    """Every model a request can call, the preset it runs, and the token limits it sets."""

    models: tuple[ModelUse, ...]
    preset: tuple[str, str] | None = None  # (param, "fusion/<name>") of a fusion request
    token_limits: tuple[tuple[str, int], ...] = ()  # (param, value), wherever the request set one
    panel_param: str = "model"  # where the panel came from: the preset ("model") or the client's list

    def chosen(self) -> list[tuple[str, str]]:
        """(param, slug) of the preset and of every model the client chose, each once, in request order."""
        named = [self.preset] if self.preset else []
        for use in self.models:
            if use.chosen and (use.param, use.slug) not in named:
                named.append((use.param, use.slug))
        return named


def reach_of(request: ChatRequest, plan: FusionPlan | None) -> Reach:
    """What `request` (planned as `plan`; None for a pass-through) can call upstream."""
    top = {"max_tokens": request.max_tokens, "max_completion_tokens": request.max_completion_tokens}
    limits = _token_limits("", {**top, "reasoning": request.reasoning}, _TOP_LEVEL_LIMITS)
    if plan is None:
        # `model`, then OpenRouter's `models` fallbacks, each tried while the one before it failed.
        uses = [ModelUse(request.model, "passthrough", "model", True)]
        uses += [
            ModelUse(slug, "passthrough", f"models[{i}]", True)
            for i, slug in enumerate(request.models or [])
            if slug != request.model
        ]
        return Reach(tuple(uses), token_limits=tuple(limits))
    prefix, config = fusion_config(request, plan)
    limits += _token_limits(prefix, config, _CONFIG_LIMITS)
    preset_param = f"{prefix}.preset" if config.get("preset") is not None else "model"
    return Reach(
        models=tuple(_fusion_models(request, plan, prefix, config)),
        preset=(preset_param, f"fusion/{plan.preset}"),
        token_limits=tuple(limits),
        panel_param=f"{prefix}.analysis_models" if config.get("analysis_models") is not None else "model",
    )


def fusion_config(request: ChatRequest, plan: FusionPlan) -> tuple[str, dict[str, Any]]:
    """Where the request's fusion settings are (`plugins[i]`, `tools[i].parameters`) and their raw values."""
    if plan.mode == "tool":
        index = fusion_tool_index(request)
        assert index is not None and request.tools is not None  # tool mode is planned from this tool
        parameters = request.tools[index].get("parameters")
        return f"tools[{index}].parameters", parameters if isinstance(parameters, dict) else {}
    index = fusion_plugin_index(request)
    if index is None or not request.plugins:
        return "", {}
    return f"plugins[{index}]", request.plugins[index]


def _fusion_models(request: ChatRequest, plan: FusionPlan, prefix: str, config: dict[str, Any]) -> list[ModelUse]:
    """The panel, the judges, and the synthesizers (or, in tool mode, the caller's own outer model)."""
    plain = not is_fusion_slug(request.model)  # the plugin or tool on a plain model: that model takes part

    def listed(field: str, role: Role, slugs: list[str]) -> list[ModelUse]:
        if config.get(field) is not None:
            return [ModelUse(slug, role, f"{prefix}.{field}[{i}]", True) for i, slug in enumerate(slugs)]
        return [ModelUse(slug, role, "model", False) for slug in slugs]

    def single(field: str, role: Role, slug: str) -> ModelUse:
        if config.get(field) is not None:
            return ModelUse(slug, role, f"{prefix}.{field}", True)
        return ModelUse(slug, role, "model", plain)

    uses: list[ModelUse] = []
    if plan.panel:  # with the panel off, neither the panel nor the judge is called
        uses += listed("analysis_models", "panel", plan.panel)
        judge = single("model", "judge", plan.judge)
        uses += [judge, *listed("judge_fallbacks", "judge", plan.judges[1:])]
    else:
        judge = single("model", "judge", plan.judge)
    if plan.mode == "tool":  # the caller's model answers, and is called again after fusion ran
        uses.append(ModelUse(request.model, "outer", "model", True))
        return uses
    synthesizer = single("synthesis_model", "synthesizer", plan.synthesizer)
    if config.get("synthesis_model") is None and not plain and plan.synthesizer == judge.slug:
        synthesizer = ModelUse(plan.synthesizer, "synthesizer", judge.param, judge.chosen)  # it defaulted to the judge
    uses += [synthesizer, *listed("synthesis_fallbacks", "synthesizer", plan.synthesizers[1:])]
    return uses


def _token_limits(prefix: str, values: dict[str, Any], fields: tuple[str, ...]) -> list[tuple[str, int]]:
    """(param, value) of each output-token limit set in `values`, `reasoning.max_tokens` included."""
    dot = f"{prefix}." if prefix else ""
    found = [(f"{dot}{name}", values.get(name)) for name in fields]
    reasoning = values.get("reasoning")
    if isinstance(reasoning, dict):
        found.append((f"{dot}reasoning.max_tokens", reasoning.get("max_tokens")))
    return [(param, value) for param, value in found if isinstance(value, int) and not isinstance(value, bool)]
