"""plan_fusion: preset selection, plugin overrides, range checks, the recursion guard and model resolution."""

from __future__ import annotations

from typing import Any

import pytest

from openfusion.errors import InvalidRequest, ModelNotFound
from openfusion.pipeline.plan import FusionPlan, fusion_plugin_index, plan_fusion
from openfusion.presets import Preset, load_presets, shipped_presets_dir
from openfusion.protocol import ChatRequest
from openfusion.settings import ProviderConfig, Settings
from openfusion.upstream.providers import ProviderRegistry

PRESETS: dict[str, Preset] = {
    **load_presets(shipped_presets_dir()),
    "split": Preset(
        name="split",
        analysis_models=["p/one", "p/two"],
        model="p/judge",
        synthesis_model="p/synth",
        max_tool_calls=7,
        max_completion_tokens=1234,
        temperature=0.3,
        tools=["web_search"],
    ),
}
QUALITY = PRESETS["quality"]
ANY_MODEL = ProviderRegistry.from_settings(
    Settings(
        providers=[ProviderConfig(name="t", base_url="http://127.0.0.1:1/v1", models=["*"])],
        builtin_providers=False,
    ),
    {},
)
BUILTINS_NO_KEYS = ProviderRegistry.from_settings(Settings(), {})
# serves only the `~vendor/model-latest` slugs of the shipped presets
TILDE_ONLY = ProviderRegistry.from_settings(
    Settings(providers=[ProviderConfig(name="t", base_url="http://t/v1", models=["~*"])]), {}
)


def request(model: str = "fusion", *plugins: dict[str, Any], **fields: Any) -> ChatRequest:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}
    if plugins:
        body["plugins"] = list(plugins)
    return ChatRequest(**body)


def fusion(**overrides: Any) -> dict[str, Any]:
    return {"id": "fusion", **overrides}


def plan(
    req: ChatRequest, *, registry: ProviderRegistry = ANY_MODEL, default_preset: str = "quality"
) -> FusionPlan | None:
    return plan_fusion(req, presets=PRESETS, default_preset=default_preset, registry=registry)


def must_plan(req: ChatRequest, **kwargs: Any) -> FusionPlan:
    result = plan(req, **kwargs)
    assert result is not None
    return result


# --- pass-through and preset selection ----------------------------------------------------------------


@pytest.mark.parametrize(
    "req",
    [
        request("openai/gpt-5"),
        request("openai/gpt-5", {"id": "web"}),
        request("openai/gpt-5", fusion(enabled=False)),
        # range checks belong to fusion: a pass-through request is not checked here
        request("openai/gpt-5", temperature=7.0),
    ],
)
def test_pass_through_returns_none(req: ChatRequest) -> None:
    assert plan(req) is None


@pytest.mark.parametrize(
    ("slug", "preset"),
    [
        ("fusion", "quality"),
        ("openrouter/fusion", "quality"),
        ("openrouter/fusion:free", "quality"),
        ("openrouter/fusion-flash", "fast"),
        ("openrouter/fusion-flash:nitro", "fast"),
        ("fusion/quality", "quality"),
        ("fusion/budget", "budget"),
        ("fusion/fast", "fast"),
        ("fusion/self", "self"),
        ("FUSION/Budget:nitro", "budget"),
        ("fusion/general-budget", "budget"),
        ("fusion/split", "split"),
    ],
)
def test_fusion_slug_selects_preset(slug: str, preset: str) -> None:
    result = must_plan(request(slug))
    expected = PRESETS[preset]
    assert result.preset == preset
    assert result.panel == expected.analysis_models
    assert result.judge == expected.model
    assert result.synthesizer == expected.synthesizer
    assert result.max_tool_calls == expected.max_tool_calls
    assert result.max_completion_tokens == expected.max_completion_tokens
    assert result.tools == frozenset(expected.tools)
    assert result.enabled
    assert result.expose is False


def test_bare_slug_uses_the_configured_default() -> None:
    assert must_plan(request("fusion"), default_preset="budget").preset == "budget"
    assert must_plan(request("openrouter/fusion"), default_preset="self").preset == "self"


def test_shipped_quality_plan() -> None:
    result = must_plan(request("fusion"))
    assert result.panel == ["~anthropic/claude-opus-latest", "~openai/gpt-latest", "~google/gemini-pro-latest"]
    assert result.judge == result.synthesizer == "~anthropic/claude-opus-latest"
    assert (result.max_tool_calls, result.max_completion_tokens) == (4, 16000)
    assert result.temperature is None
    assert result.reasoning is None


def test_plan_panel_is_a_copy() -> None:
    result = must_plan(request("fusion"))
    result.panel.append("x/y")
    assert QUALITY.analysis_models == [
        "~anthropic/claude-opus-latest",
        "~openai/gpt-latest",
        "~google/gemini-pro-latest",
    ]


@pytest.mark.parametrize("slug", ["fusion/nope", "openrouter/fusion-unknown", "fusion/", "fusion/nope:free"])
def test_unknown_preset_slug_is_model_not_found(slug: str) -> None:
    with pytest.raises(ModelNotFound) as info:
        plan(request(slug))
    error = info.value
    assert error.status_code == 404
    assert error.code == "model_not_found"
    assert error.param == "model"
    assert repr(slug) in error.message
    assert "fusion/quality" in error.message  # lists what is available


def test_missing_default_preset_is_model_not_found() -> None:
    with pytest.raises(ModelNotFound) as info:
        plan(request("fusion"), default_preset="nope")
    assert info.value.param == "model"
    assert info.value.status_code == 404


# --- plugin overrides ----------------------------------------------------------------------------------


def test_plugin_overrides_everything() -> None:
    result = must_plan(
        request(
            "fusion",
            fusion(
                analysis_models=["x/a", "x/b"],
                model="x/judge",
                synthesis_model="x/synth",
                max_tool_calls=9,
                max_completion_tokens=500,
                temperature=0.7,
                reasoning={"effort": "high"},
                expose=True,
                tools=[],
            ),
        )
    )
    assert result.panel == ["x/a", "x/b"]
    assert result.judge == "x/judge"
    assert result.synthesizer == "x/synth"
    assert result.max_tool_calls == 9
    assert result.max_completion_tokens == 500
    assert result.temperature == 0.7
    assert result.reasoning == {"effort": "high"}
    assert result.expose is True
    assert result.tools == frozenset()


def test_plugin_model_is_judge_and_default_synthesizer() -> None:
    result = must_plan(request("fusion", fusion(model="x/judge")))
    assert result.panel == QUALITY.analysis_models
    assert (result.judge, result.synthesizer) == ("x/judge", "x/judge")


def test_plugin_model_keeps_a_preset_synthesis_model() -> None:
    result = must_plan(request("fusion/split", fusion(model="x/judge")))
    assert (result.judge, result.synthesizer) == ("x/judge", "p/synth")


def test_plugin_synthesis_model_alone() -> None:
    result = must_plan(request("fusion", fusion(synthesis_model="x/synth")))
    assert (result.judge, result.synthesizer) == (QUALITY.model, "x/synth")


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("budget", "budget"),
        ("self", "self"),
        ("general-high", "quality"),
        ("general-budget", "budget"),
        ("general-fast", "fast"),
    ],
)
def test_plugin_preset(preset: str, expected: str) -> None:
    result = must_plan(request("fusion", fusion(preset=preset)))
    assert result.preset == expected
    assert result.panel == PRESETS[expected].analysis_models


def test_plugin_preset_wins_over_slug_preset() -> None:
    assert must_plan(request("fusion/budget", fusion(preset="fast"))).preset == "fast"


@pytest.mark.parametrize(
    ("plugin_temp", "request_temp", "expected"),
    [
        (None, None, 0.3),  # the preset's
        (None, 1.1, 1.1),  # the request's beats the preset's
        (0.9, 1.1, 0.9),  # the plugin's beats both
        (0.0, 1.1, 0.0),  # zero is a value, not "unset"
        (None, 0.0, 0.0),
    ],
)
def test_temperature_precedence(plugin_temp: float | None, request_temp: float | None, expected: float) -> None:
    plugin = fusion() if plugin_temp is None else fusion(temperature=plugin_temp)
    fields = {} if request_temp is None else {"temperature": request_temp}
    assert must_plan(request("fusion/split", plugin, **fields)).temperature == expected


def test_request_reasoning_is_forwarded_unless_the_plugin_sets_one() -> None:
    assert must_plan(request("fusion", reasoning={"effort": "low"})).reasoning == {"effort": "low"}
    result = must_plan(request("fusion", fusion(reasoning={"max_tokens": 2000}), reasoning={"effort": "low"}))
    assert result.reasoning == {"max_tokens": 2000}


def test_enabled_false_on_a_fusion_slug_empties_the_panel() -> None:
    result = must_plan(request("fusion", fusion(enabled=False)))
    assert result.panel == []
    assert result.enabled is False
    assert result.synthesizer == QUALITY.synthesizer


def test_plugin_on_a_plain_model_fuses_with_that_model() -> None:
    result = must_plan(request("openai/gpt-5", fusion()))
    assert result.panel == QUALITY.analysis_models
    assert result.judge == "openai/gpt-5"
    assert result.synthesizer == "openai/gpt-5"
    assert result.enabled


def test_plugin_on_a_plain_model_with_overrides() -> None:
    result = must_plan(request("openai/gpt-5", fusion(preset="budget", model="x/judge")))
    assert result.panel == PRESETS["budget"].analysis_models
    assert result.judge == "x/judge"
    assert result.synthesizer == "openai/gpt-5"


def test_plugin_is_found_among_other_plugins() -> None:
    req = request("fusion", {"id": "web"}, fusion(model="x/judge"))
    assert fusion_plugin_index(req) == 1
    assert must_plan(req).judge == "x/judge"


def test_no_plugin_index_without_fusion_plugin() -> None:
    assert fusion_plugin_index(request("fusion")) is None
    assert fusion_plugin_index(request("fusion", {"id": "web"})) is None


# --- range and type checks: 400 naming the field -----------------------------------------------------

NINE = [f"x/m{i}" for i in range(9)]


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"analysis_models": []}, "plugins[0].analysis_models"),
        ({"analysis_models": NINE}, "plugins[0].analysis_models"),
        ({"analysis_models": "x/a"}, "plugins[0].analysis_models"),
        ({"analysis_models": ["x/a", ""]}, "plugins[0].analysis_models[1]"),
        ({"max_tool_calls": 0}, "plugins[0].max_tool_calls"),
        ({"max_tool_calls": 17}, "plugins[0].max_tool_calls"),
        ({"max_tool_calls": "5"}, "plugins[0].max_tool_calls"),
        ({"max_tool_calls": 2.5}, "plugins[0].max_tool_calls"),
        ({"max_completion_tokens": 0}, "plugins[0].max_completion_tokens"),
        ({"max_completion_tokens": 1_000_001}, "plugins[0].max_completion_tokens"),
        ({"temperature": -0.1}, "plugins[0].temperature"),
        ({"temperature": 2.5}, "plugins[0].temperature"),
        ({"temperature": "1"}, "plugins[0].temperature"),
        ({"expose": "yes"}, "plugins[0].expose"),
        ({"enabled": "no"}, "plugins[0].enabled"),
        ({"model": 5}, "plugins[0].model"),
        ({"reasoning": {"effort": "huge"}}, "plugins[0].reasoning.effort"),
        ({"reasoning": {"max_tokens": 0}}, "plugins[0].reasoning.max_tokens"),
        ({"reasoning": {"effort": "high", "max_tokens": 100}}, "plugins[0].reasoning"),
        ({"reasoning": "high"}, "plugins[0].reasoning"),
        ({"preset": "nope"}, "plugins[0].preset"),
        ({"preset": "general-nope"}, "plugins[0].preset"),
    ],
)
def test_plugin_range_checks(overrides: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        plan(request("fusion", fusion(**overrides)))
    error = info.value
    assert error.status_code == 400
    assert error.error_type == "invalid_request_error"
    assert error.param == param
    assert f"'{param}'" in error.message


def test_plugin_param_uses_the_plugin_index() -> None:
    with pytest.raises(InvalidRequest) as info:
        plan(request("fusion", {"id": "web"}, fusion(max_tool_calls=0)))
    assert info.value.param == "plugins[1].max_tool_calls"


def test_plugin_checks_apply_to_a_plain_model_too() -> None:
    with pytest.raises(InvalidRequest) as info:
        plan(request("openai/gpt-5", fusion(max_tool_calls=17)))
    assert info.value.param == "plugins[0].max_tool_calls"


def test_unknown_plugin_preset_lists_the_available_ones() -> None:
    with pytest.raises(InvalidRequest) as info:
        plan(request("fusion", fusion(preset="nope")))
    assert "'nope'" in info.value.message
    assert "budget" in info.value.message
    assert "quality" in info.value.message


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"n": 2}, "n"),
        ({"reasoning": {"effort": "huge"}}, "reasoning.effort"),
        ({"reasoning": {"effort": "high", "max_tokens": 100}}, "reasoning"),
    ],
)
def test_request_range_checks(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        plan(request("fusion", **fields))
    assert info.value.status_code == 400
    assert info.value.param == param
    assert f"'{param}'" in info.value.message


def test_request_range_checks_apply_to_the_plugin_path() -> None:
    with pytest.raises(InvalidRequest) as info:
        plan(request("openai/gpt-5", fusion(), temperature=2.5))
    assert info.value.param == "temperature"


@pytest.mark.parametrize("value", [0.0, 2.0, 1])
def test_temperature_bounds_are_inclusive(value: float) -> None:
    assert must_plan(request("fusion", fusion(temperature=value))).temperature == value
    assert must_plan(request("fusion", temperature=value)).temperature == value


@pytest.mark.parametrize(("field", "value"), [("max_tool_calls", 1), ("max_tool_calls", 16)])
def test_max_tool_calls_bounds_are_inclusive(field: str, value: int) -> None:
    assert getattr(must_plan(request("fusion", fusion(**{field: value}))), field) == value


def test_eight_analysis_models_are_allowed() -> None:
    assert len(must_plan(request("fusion", fusion(analysis_models=NINE[:8]))).panel) == 8


# --- recursion guard ---------------------------------------------------------------------------------

FUSION_SLUGS = ["fusion", "fusion/budget", "openrouter/fusion", "openrouter/fusion-flash:free", "Fusion/Quality"]


@pytest.mark.parametrize("slug", FUSION_SLUGS)
@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        (lambda s: {"analysis_models": ["x/a", s]}, "plugins[0].analysis_models[1]"),
        (lambda s: {"analysis_models": [s]}, "plugins[0].analysis_models[0]"),
        (lambda s: {"model": s}, "plugins[0].model"),
        (lambda s: {"synthesis_model": s}, "plugins[0].synthesis_model"),
    ],
)
def test_recursion_guard(slug: str, overrides: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        plan(request("fusion", fusion(**overrides(slug))))
    error = info.value
    assert error.status_code == 400
    assert error.param == param
    assert error.code == "fusion_recursion"
    assert repr(slug) in error.message


def test_recursion_guard_on_a_plain_model() -> None:
    with pytest.raises(InvalidRequest) as info:
        plan(request("openai/gpt-5", fusion(model="openrouter/fusion")))
    assert info.value.param == "plugins[0].model"


# --- every model must have a provider ----------------------------------------------------------------


def test_unserved_panel_model_names_the_env_var() -> None:
    with pytest.raises(ModelNotFound) as info:
        plan(request("fusion", fusion(analysis_models=["openai/gpt-5"])), registry=BUILTINS_NO_KEYS)
    error = info.value
    assert error.status_code == 404
    assert error.code == "model_not_found"
    assert error.param == "plugins[0].analysis_models[0]"
    assert "'openai/gpt-5'" in error.message
    assert "OPENAI_API_KEY" in error.message
    assert "[[providers]]" in error.message


@pytest.mark.parametrize(
    ("overrides", "param", "env"),
    [
        ({"analysis_models": ["x/a", "anthropic/claude-opus-4"]}, "plugins[0].analysis_models[1]", "ANTHROPIC_API_KEY"),
        ({"model": "google/gemini-2.5-pro"}, "plugins[0].model", "GEMINI_API_KEY"),
        ({"synthesis_model": "deepseek/deepseek-chat"}, "plugins[0].synthesis_model", "DEEPSEEK_API_KEY"),
    ],
)
def test_unserved_model_param_names_the_role(overrides: dict[str, Any], param: str, env: str) -> None:
    registry = ProviderRegistry.from_settings(
        Settings(providers=[ProviderConfig(name="x", base_url="http://x/v1", models=["x/*"])]), {}
    )
    base = {"analysis_models": ["x/a"], "model": "x/judge", "synthesis_model": "x/synth"}
    with pytest.raises(ModelNotFound) as info:
        plan(request("fusion", fusion(**{**base, **overrides})), registry=registry)
    assert info.value.param == param
    assert env in info.value.message


def test_unserved_preset_model_without_plugin_points_at_model() -> None:
    with pytest.raises(ModelNotFound) as info:
        plan(request("fusion"), registry=BUILTINS_NO_KEYS)
    assert info.value.param == "model"
    assert "~anthropic/claude-opus-latest" in info.value.message
    assert "OPENROUTER_API_KEY" in info.value.message


@pytest.mark.parametrize(
    ("req", "registry"),
    [
        # the judge/synthesizer is the request's own model: the plugin has no `model` field
        (request("openai/gpt-5", fusion(expose=True)), TILDE_ONLY),
        # the panel comes from the preset the slug chose: the plugin has no `analysis_models` field
        (request("fusion", fusion(expose=True)), BUILTINS_NO_KEYS),
    ],
    ids=["own-model", "preset-panel"],
)
def test_unserved_model_param_names_a_field_the_client_sent(req: ChatRequest, registry: ProviderRegistry) -> None:
    with pytest.raises(ModelNotFound) as info:
        plan(req, registry=registry)
    assert info.value.param == "model"


def test_key_makes_the_model_resolvable() -> None:
    registry = ProviderRegistry.from_settings(Settings(), {"OPENAI_API_KEY": "sk-test"})
    result = must_plan(request("openai/gpt-5", fusion(analysis_models=["openai/gpt-5-mini"])), registry=registry)
    assert result.panel == ["openai/gpt-5-mini"]


def test_disabled_panel_still_checks_the_synthesizer() -> None:
    with pytest.raises(ModelNotFound) as info:
        plan(request("fusion", fusion(enabled=False, model="openai/gpt-5")), registry=BUILTINS_NO_KEYS)
    assert "OPENAI_API_KEY" in info.value.message
