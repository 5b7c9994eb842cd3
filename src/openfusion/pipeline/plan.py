"""Resolve a request into a fusion plan: preset, plugin overrides, range checks and the recursion guard."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from openfusion.errors import InvalidRequest, ModelNotFound, invalid_request_from
from openfusion.presets import (
    DEFAULT_TIMEOUT_S,
    Fallbacks,
    ModelSlug,
    Preset,
    Seconds,
    is_fusion_slug,
    preset_name_for,
)
from openfusion.protocol import ChatRequest, PlainName
from openfusion.upstream.providers import ProviderRegistry
from openfusion.upstream.web.tools import ToolSpecError, excluded_domains, normalize_tools

# The server tool's type, OpenRouter's spelling and ours.
FUSION_TOOL_TYPES = ("openrouter:fusion", "fusion")
# The function the caller's own model is offered in tool mode: no function of the client's may have its name.
FUSION_FUNCTION = "fusion"

# OpenRouter's preset names, accepted as aliases of ours.
PRESET_ALIASES = {"general-high": "quality", "general-budget": "budget", "general-fast": "fast"}

Effort = Literal["max", "xhigh", "high", "medium", "low", "minimal", "none"]


class Reasoning(BaseModel):
    """OpenRouter's `reasoning` object."""

    model_config = ConfigDict(extra="allow", strict=True)

    effort: Effort | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    exclude: bool | None = None
    enabled: bool | None = None


class CacheRequest(BaseModel):
    """The plugin's `cache` object: cache this request's run (or not, with `ttl_s: 0`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    ttl_s: float | None = Field(default=None, ge=0, le=30 * 24 * 3600)  # 0: not cached
    degraded: bool | None = None  # also cache the run when it degraded


@dataclass(frozen=True)
class CachePolicy:
    """Whether and how long a run's result is cached, resolved from the preset and the plugin."""

    ttl_s: float
    degraded: bool = False  # runs with a failed panelist, judge or synthesizer too
    research: bool = False  # runs that researched the web too (only a preset allows it)


class FusionPlugin(BaseModel):
    """`plugins: [{"id": "fusion", ...}]`: per-request overrides of the preset."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: Literal["fusion"] | None = None  # required in `plugins`, absent in the server tool's parameters
    preset: PlainName | None = None
    analysis_models: list[ModelSlug] | None = Field(default=None, min_length=1, max_length=8)
    model: ModelSlug | None = None
    synthesis_model: ModelSlug | None = None
    max_tool_calls: int | None = Field(default=None, ge=1, le=16)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    reasoning: Reasoning | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    expose: bool = False
    enabled: bool = True
    tools: list[Any] | None = None
    judge_tools: bool | None = None
    panel_timeout_s: Seconds | None = None
    panel_deadline_s: Seconds | None = None
    min_successful: int | None = Field(default=None, ge=1, le=8)
    judge_timeout_s: Seconds | None = None
    synth_timeout_s: Seconds | None = None
    judge_fallbacks: Fallbacks | None = None
    synthesis_fallbacks: Fallbacks | None = None
    max_cost: float | None = Field(default=None, gt=0)
    # Agent loops on the slug path: "auto" reuses the turn's analysis when the last message is a tool result.
    refire: Literal["auto", "always"] = "auto"
    cache: CacheRequest | None = None


# Plugin fields that name models, checked by the recursion guard and for a provider.
_MODEL_FIELDS = ("analysis_models", "model", "synthesis_model", "judge_fallbacks", "synthesis_fallbacks")
# Plugin fields that simply override the preset's value of the same name.
_OVERRIDES = (
    "max_tool_calls",
    "max_completion_tokens",
    "judge_tools",
    "panel_timeout_s",
    "panel_deadline_s",
    "min_successful",
    "judge_timeout_s",
    "synth_timeout_s",
)


class _SamplingChecks(BaseModel):
    """Range checks on the request's own fields that fusion forwards."""

    model_config = ConfigDict(extra="ignore")

    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=1)
    reasoning: Reasoning | None = None


class CostEstimate(Protocol):
    """A worst-case cost (`pipeline.budget`): USD, or None when it cannot be bounded."""

    @property
    def usd(self) -> float | None: ...


@dataclass(frozen=True)
class FusionPlan:
    """Everything a fusion run needs to know, resolved and validated."""

    preset: str | None
    panel: list[str]
    judges: list[str]  # the judge, then its fallbacks
    synthesizers: list[str]  # the synthesizer, then its fallbacks
    max_tool_calls: int = 4
    max_completion_tokens: int = 16000
    temperature: float | None = None
    reasoning: dict[str, Any] | None = None
    expose: bool = False
    tools: frozenset[str] = frozenset()  # research tools offered: web_search, web_fetch
    blocked_domains: frozenset[str] = frozenset()  # excluded from research for this request
    judge_tools: bool = True
    panel_timeout_s: float = DEFAULT_TIMEOUT_S
    panel_deadline_s: float | None = None
    min_successful: int = 1
    judge_timeout_s: float = DEFAULT_TIMEOUT_S
    synth_timeout_s: float = DEFAULT_TIMEOUT_S
    max_cost: float | None = None  # USD: refuse (402) when the worst case is above it
    # The worst case in USD, priced when first asked (at once with max_cost; otherwise while the synthesizer's
    # answer is awaited, for the report): see `estimated_max_cost`.
    cost: CostEstimate | None = field(default=None, compare=False, repr=False)
    # "slug": fusion answers; "tool": the caller's own (outer) model may call fusion as a tool.
    mode: Literal["slug", "tool"] = "slug"
    config_param: str = ""  # where the request's fusion settings came from: "plugins[0]", "tools[1].parameters"
    force_tool: bool = False  # tool mode: tool_choice asked for a fusion run
    refire: Literal["auto", "always"] = "auto"
    cache: CachePolicy | None = None  # None: the run's result is not cached

    @property
    def judge(self) -> str:
        return self.judges[0]

    @property
    def synthesizer(self) -> str:
        return self.synthesizers[0]

    @property
    def enabled(self) -> bool:
        """False when the plugin turned the panel off: the synthesizer answers alone."""
        return bool(self.panel)

    @property
    def estimated_max_cost(self) -> float | None:
        """The worst-case cost in USD (None: unknown, or not priced); priced on first use."""
        return self.cost.usd if self.cost is not None else None

    def with_estimate(self, cost: CostEstimate) -> FusionPlan:
        """This plan with its worst-case cost: a copy with that one field set.

        `dataclasses.replace` would rebuild every field through `__init__` (~15 µs for a plan, per request).
        """
        plan = copy.copy(self)
        object.__setattr__(plan, "cost", cost)  # as a frozen dataclass's own __init__ sets fields
        return plan


def fusion_plugin_index(request: ChatRequest) -> int | None:
    """The index of the fusion plugin in `plugins`, if there is one."""
    for index, plugin in enumerate(request.plugins or []):
        if isinstance(plugin, dict) and plugin.get("id") == "fusion":
            return index
    return None


def check_one_fusion_plugin(request: ChatRequest) -> None:
    """Raise InvalidRequest (400) naming the second fusion plugin, when `plugins` has more than one.

    Only the first is read here and taken out of a pass-through body; a second would go on to the provider as
    sent, and one that runs fusion itself (OpenRouter) would call the models it names: beyond the key's scope,
    the guards and the worst-case cost, which read the first alone.
    """
    found = [
        i for i, plugin in enumerate(request.plugins or []) if isinstance(plugin, dict) and plugin.get("id") == "fusion"
    ]
    if len(found) > 1:
        param = f"plugins[{found[1]}]"
        raise InvalidRequest(
            f"Invalid value for '{param}': only one fusion plugin may be given (the first is plugins[{found[0]}]).",
            param=param,
        )


def fusion_tool_index(request: ChatRequest) -> int | None:
    """The index of the fusion server tool in `tools`, if there is one."""
    for index, tool in enumerate(request.tools or []):
        if isinstance(tool, dict) and tool.get("type") in FUSION_TOOL_TYPES:
            return index
    return None


def _check_no_function_named_fusion(request: ChatRequest) -> None:
    """Raise InvalidRequest (400) naming a function tool of the client's called `fusion`, beside the server tool.

    The caller's model would be offered two functions of that name, and its call of the client's would run a panel
    (billed to the key) rather than go back to the client.
    """
    for index, tool in enumerate(request.tools or []):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if isinstance(function, dict) and function.get("name") == FUSION_FUNCTION:
            param = f"tools[{index}].function.name"
            raise InvalidRequest(
                f"Invalid value for '{param}': {FUSION_FUNCTION!r} is the name of the function fusion's server tool "
                "offers the model; give your own function another name.",
                param=param,
            )


def _forces_fusion(tool_choice: Any) -> bool:
    if tool_choice == "required":
        return True
    return isinstance(tool_choice, dict) and tool_choice.get("type") in FUSION_TOOL_TYPES


@dataclass(frozen=True)
class FusionAsk:
    """What a fusion request asks for, read from the request alone: no preset has been looked at yet.

    The key's scope is checked on `preset` before any preset is read, so that a key learns nothing (not even
    whether it exists) of a preset outside its scope.
    """

    mode: Literal["slug", "tool"]
    prefix: str  # where its settings are: "plugins[0]", "tools[1].parameters"
    plugin: FusionPlugin | None  # those settings, validated
    preset: str | None  # the preset it runs (OpenRouter's names mapped to ours); None: a fusion slug naming none
    preset_param: str  # the field that chose the preset: `<prefix>.preset`, or `model` (the slug, or the default)
    preset_named: str  # how the client named it: `'fusion/x'`, `'openrouter/fusion'`, or the default preset


def _everything(slug: str) -> bool:
    return True


def plan_fusion(
    request: ChatRequest,
    *,
    presets: dict[str, Preset],
    default_preset: str,
    registry: ProviderRegistry,
    listed: Callable[[str], bool] = _everything,
) -> FusionPlan | None:
    """The fusion plan for a request, or None when the request is a plain pass-through.

    `listed` says which presets (as `fusion/<name>`) an unknown preset's error may name: those the caller may use.
    """
    ask = read_fusion(request, default_preset=default_preset)
    if ask is None:
        return None
    return plan_asked(request, ask, presets=presets, registry=registry, listed=listed)


def read_fusion(request: ChatRequest, *, default_preset: str) -> FusionAsk | None:
    """What a request asks of fusion (mode, settings, preset), or None for a plain pass-through; 400 for bad settings.

    Reads the request alone: nothing here depends on the configured presets.
    """
    check_one_fusion_plugin(request)
    fusion_slug = is_fusion_slug(request.model)
    tool_index = fusion_tool_index(request)
    if tool_index is not None and not fusion_slug:
        prefix = f"tools[{tool_index}].parameters"
        parameters = (request.tools or [])[tool_index].get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidRequest(f"Invalid value for '{prefix}': must be an object.", param=prefix)
        plugin: FusionPlugin | None = _parse_config(parameters, prefix)
        _check_no_function_named_fusion(request)
        mode: Literal["slug", "tool"] = "tool"
    else:
        index = fusion_plugin_index(request)
        prefix = f"plugins[{index}]"
        plugin = _parse_config(request.plugins[index], prefix) if request.plugins and index is not None else None
        if not fusion_slug and (plugin is None or not plugin.enabled):
            return None
        mode = "slug"
    _check_sampling(request)
    # The preset's name as the client wrote it: an alias or the default never gives the configured name away.
    if plugin is not None and plugin.preset is not None:
        preset, preset_param = PRESET_ALIASES.get(plugin.preset, plugin.preset), f"{prefix}.preset"
        named = repr(f"fusion/{plugin.preset}")
    elif fusion_slug:
        name = preset_name_for(request.model, default_preset)
        preset, preset_param, named = PRESET_ALIASES.get(name, name) if name else None, "model", repr(request.model)
    else:
        preset, preset_param, named = default_preset, "model", "the default fusion preset"
    return FusionAsk(mode=mode, prefix=prefix, plugin=plugin, preset=preset, preset_param=preset_param,
                     preset_named=named)  # fmt: skip


def plan_asked(
    request: ChatRequest,
    ask: FusionAsk,
    *,
    presets: dict[str, Preset],
    registry: ProviderRegistry,
    listed: Callable[[str], bool] = _everything,
) -> FusionPlan:
    """The plan for what `read_fusion` found in a request: its preset resolved, the plugin's overrides applied."""
    mode, prefix, plugin = ask.mode, ask.prefix, ask.plugin
    fusion_slug = is_fusion_slug(request.model)
    preset = _select_preset(request, ask, presets=presets, listed=listed)
    given = plugin.model_dump(exclude_none=True) if plugin else {}
    panel = list(given.get("analysis_models", preset.analysis_models))
    if fusion_slug:
        judge = given.get("model", preset.model)
        synthesizer = given.get("synthesis_model") or preset.synthesis_model or judge
    else:  # the caller's own model: it judges (unless set) and writes the answer (as the outer model in tool mode)
        judge = given.get("model", request.model)
        synthesizer = request.model if mode == "tool" else given.get("synthesis_model", request.model)
    if plugin is not None and not plugin.enabled:
        panel = []
    overrides = {name: given.get(name, getattr(preset, name)) for name in _OVERRIDES}
    if panel and overrides["min_successful"] > len(panel):
        param = f"{prefix}.min_successful" if "min_successful" in given else "model"
        raise InvalidRequest(
            f"Invalid value for '{param}': min_successful ({overrides['min_successful']}) exceeds the "
            f"panel size ({len(panel)}).",
            param=param,
        )
    plan = FusionPlan(
        preset=preset.name,
        panel=panel,
        judges=[judge, *given.get("judge_fallbacks", preset.judge_fallbacks)],
        synthesizers=[synthesizer, *given.get("synthesis_fallbacks", preset.synthesis_fallbacks)],
        temperature=_first(plugin and plugin.temperature, request.temperature, preset.temperature),
        reasoning=given.get("reasoning", request.reasoning),
        expose=bool(plugin and plugin.expose),
        max_cost=plugin.max_cost if plugin else None,
        mode=mode,
        config_param=prefix if plugin is not None else "",
        force_tool=mode == "tool" and _forces_fusion(request.tool_choice),
        refire=plugin.refire if plugin else "auto",
        cache=_cache_policy(preset, plugin) if mode == "slug" else None,
        **_research_tools(plugin.tools if plugin and plugin.tools is not None else preset.tools, prefix),
        **overrides,
    )
    _check_models(registry, plan, given=given, prefix=prefix)
    return plan


_NOT_ASKED = CacheRequest()  # no `cache` in the request: the preset decides


def _cache_policy(preset: Preset, plugin: FusionPlugin | None) -> CachePolicy | None:
    """The plugin's `cache` over the preset's; None when neither turns caching on (or the plugin turns it off)."""
    asked = plugin.cache if plugin is not None and plugin.cache is not None else _NOT_ASKED
    ttl_s = asked.ttl_s if asked.ttl_s is not None else preset.cache_ttl_s
    if not ttl_s:
        return None
    degraded = asked.degraded if asked.degraded is not None else preset.cache_degraded
    return CachePolicy(ttl_s=float(ttl_s), degraded=degraded, research=preset.cache_research)


def _research_tools(spec: list[Any], prefix: str) -> dict[str, frozenset[str]]:
    """The research tools a preset or plugin lists, and the domains their parameters exclude."""
    try:
        names, blocked = normalize_tools(spec), excluded_domains(spec)
    except ValueError as exc:
        param = f"{prefix}.tools" + (exc.where if isinstance(exc, ToolSpecError) else "")
        raise InvalidRequest(f"Invalid value for '{param}': {exc}.", param=param) from None
    return {"tools": frozenset(names), "blocked_domains": frozenset(blocked)}


def _first(*values: float | None) -> float | None:
    return next((value for value in values if value is not None), None)


def _parse_config(data: Any, prefix: str) -> FusionPlugin:
    """The plugin (or the server tool's parameters), validated; errors name the field under `prefix`."""
    try:
        plugin = FusionPlugin.model_validate(data)
    except ValidationError as exc:
        raise invalid_request_from(exc, prefix=prefix) from None
    for field_name in _MODEL_FIELDS:
        value = getattr(plugin, field_name)
        for position, slug in enumerate(value if isinstance(value, list) else [value]):
            if slug is not None and is_fusion_slug(slug):
                param = f"{prefix}.{field_name}" + (f"[{position}]" if isinstance(value, list) else "")
                raise InvalidRequest(
                    f"Invalid value for '{param}': {slug!r} is a fusion model, and fusion cannot call itself.",
                    param=param,
                    code="fusion_recursion",
                )
    if plugin.reasoning and plugin.reasoning.effort and plugin.reasoning.max_tokens:
        param = f"{prefix}.reasoning"
        raise InvalidRequest(f"Invalid value for '{param}': use effort or max_tokens, not both.", param=param)
    return plugin


_SAMPLING_CHECKED = tuple(_SamplingChecks.model_fields)


def _check_sampling(request: ChatRequest) -> None:
    given = {name: value for name in _SAMPLING_CHECKED if (value := getattr(request, name)) is not None}
    if not given:  # nothing set: nothing to check
        return
    try:
        checks = _SamplingChecks.model_validate(given)
    except ValidationError as exc:
        raise invalid_request_from(exc) from None
    if checks.reasoning and checks.reasoning.effort and checks.reasoning.max_tokens:
        raise InvalidRequest("Invalid value for 'reasoning': use effort or max_tokens, not both.", param="reasoning")


def check_reasoning(request: ChatRequest) -> None:
    """A pass-through's `reasoning`, read as fusion reads it: it is translated for each provider
    (`upstream.reasoning`), so one that is not OpenRouter's object (an effort of no known name) is a 400 here."""
    if request.reasoning is None:
        return
    try:
        Reasoning.model_validate(request.reasoning)
    except ValidationError as exc:
        raise invalid_request_from(exc, prefix="reasoning") from None


def _select_preset(
    request: ChatRequest, ask: FusionAsk, *, presets: dict[str, Preset], listed: Callable[[str], bool]
) -> Preset:
    """The preset a request asked for; an unknown one is refused naming only the presets `listed` allows."""
    if ask.preset is not None and ask.preset in presets:
        return presets[ask.preset]
    names = sorted(name for name in presets if listed(f"fusion/{name}"))
    plugin = ask.plugin
    if plugin is not None and plugin.preset is not None:
        param = f"{ask.prefix}.preset"
        available = f"available: {', '.join(names)}" if names else "none is available"
        raise InvalidRequest(
            f"Invalid value for '{param}': unknown preset {plugin.preset!r}; {available}.", param=param
        )
    if is_fusion_slug(request.model):
        available = f"Available: {', '.join('fusion/' + n for n in names)}" if names else "None is available"
        raise ModelNotFound(
            f"The model {request.model!r} does not exist: no such fusion preset. {available}.", param="model"
        )
    raise ModelNotFound(f"The default fusion preset {ask.preset!r} does not exist.", param="model")


def _check_models(registry: ProviderRegistry, plan: FusionPlan, *, given: dict[str, Any], prefix: str) -> None:
    """Every model of the plan must have a provider before anything is sent."""
    roles = [("analysis_models", f"analysis_models[{i}]", slug) for i, slug in enumerate(plan.panel)]
    roles += [("model", "model", plan.judge), ("synthesis_model", "synthesis_model", plan.synthesizer)]
    roles += [("judge_fallbacks", f"judge_fallbacks[{i}]", s) for i, s in enumerate(plan.judges[1:])]
    roles += [("synthesis_fallbacks", f"synthesis_fallbacks[{i}]", s) for i, s in enumerate(plan.synthesizers[1:])]
    for field_name, path, slug in roles:
        try:
            registry.resolve(slug)
        except ModelNotFound as exc:
            # Name the plugin field only when the client set it; otherwise the model came from the preset.
            param = f"{prefix}.{path}" if field_name in given else "model"
            raise ModelNotFound(f"{exc.message.rstrip('.')} (needed as fusion {field_name}).", param=param) from None
