"""Key scopes and request guards, on requests resolved by the real planner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from openfusion.access.config import GuardsConfig, Limits
from openfusion.access.errors import ModelNotAllowed
from openfusion.access.guards import check_guards
from openfusion.access.keys import Client
from openfusion.access.scope import check_scope
from openfusion.errors import InvalidRequest
from openfusion.pipeline import plan as plan_module
from openfusion.pipeline.plan import FusionPlan, plan_fusion
from openfusion.pipeline.reach import ModelUse, reach_of
from openfusion.presets import load_presets, shipped_presets_dir
from openfusion.protocol import ChatRequest
from openfusion.settings import ProviderConfig, Settings
from openfusion.upstream.providers import ProviderRegistry


@pytest.fixture
def resolve(presets_dir: Path) -> Any:
    """Parse a body and plan it as chat.py does: (request, plan or None)."""
    presets = load_presets(shipped_presets_dir(), presets_dir)
    settings = Settings(
        providers=[ProviderConfig(name="any", base_url="http://127.0.0.1:1/v1", models=["*"])],
        builtin_providers=False,
    )
    registry = ProviderRegistry.from_settings(settings, {})

    def run(**body: Any) -> tuple[ChatRequest, FusionPlan | None]:
        chat = ChatRequest.model_validate({"messages": [{"role": "user", "content": "Hi"}], **body})
        return chat, plan_fusion(chat, presets=presets, default_preset="trio", registry=registry)

    return run


def client(*models: str) -> Client:
    return Client(name="team-a", limits=Limits(), models=models)


def requested_models(chat: ChatRequest, plan: FusionPlan | None) -> list[tuple[str, str]]:
    """What the scope checks of a planned request."""
    return reach_of(chat, plan).chosen()


def guard(guards: GuardsConfig, chat: ChatRequest, plan: FusionPlan | None) -> None:
    check_guards(guards, chat=chat, plan=plan, reach=reach_of(chat, plan))


def test_a_pass_through_request_names_its_model(resolve: Any) -> None:
    assert requested_models(*resolve(model="openai/gpt-5")) == [("model", "openai/gpt-5")]


@pytest.mark.parametrize("model", ["fusion", "openrouter/fusion", "fusion/trio", "fusion/trio:free"])
def test_every_fusion_alias_is_checked_as_the_preset_it_runs(resolve: Any, model: str) -> None:
    assert requested_models(*resolve(model=model)) == [("model", "fusion/trio")]


def test_the_plugin_names_its_preset_and_models(resolve: Any) -> None:
    plugin = {"id": "fusion", "preset": "duo", "analysis_models": ["x/a", "x/b"], "synthesis_model": "x/s"}
    named = requested_models(*resolve(model="fusion/trio", plugins=[{"id": "web"}, plugin]))
    assert named == [
        ("plugins[1].preset", "fusion/duo"),
        ("plugins[1].analysis_models[0]", "x/a"),
        ("plugins[1].analysis_models[1]", "x/b"),
        ("plugins[1].synthesis_model", "x/s"),
    ]


@pytest.mark.parametrize("where", ["plugin", "tool"])
def test_every_model_naming_plugin_field_is_in_scope(resolve: Any, where: str) -> None:
    # Each field the planner reads a model from (its recursion guard's list), set by the client, is checked.
    values = {"analysis_models": ["x/p1", "x/p2"], "model": "x/j", "synthesis_model": "x/s",
              "judge_fallbacks": ["x/jf"], "synthesis_fallbacks": ["x/sf"]}  # fmt: skip
    assert set(values) == set(plan_module._MODEL_FIELDS)
    if where == "plugin":
        chat, plan = resolve(model="fusion/trio", plugins=[{"id": "fusion", **values}])
        prefix, expected = "plugins[0]", set(values)
    else:
        chat, plan = resolve(model="x/outer", tools=[{"type": "openrouter:fusion", "parameters": values}])
        # Tool mode: the caller's model answers; a synthesizer and its fallbacks are never called.
        prefix, expected = "tools[0].parameters", set(values) - {"synthesis_model", "synthesis_fallbacks"}
    named = requested_models(chat, plan)
    fields = {param.removeprefix(f"{prefix}.").split("[")[0] for param, _ in named if param.startswith(prefix)}
    assert fields == expected


def test_fallback_lists_are_named(resolve: Any) -> None:
    plugin = {"id": "fusion", "judge_fallbacks": ["x/j2"], "synthesis_fallbacks": ["x/s2", "x/s3"]}
    named = requested_models(*resolve(model="fusion/trio", plugins=[plugin]))
    assert named[1:] == [
        ("plugins[0].judge_fallbacks[0]", "x/j2"),
        ("plugins[0].synthesis_fallbacks[0]", "x/s2"),
        ("plugins[0].synthesis_fallbacks[1]", "x/s3"),
    ]
    # OpenRouter's `models` list: each may answer when the one before it failed.
    named = requested_models(*resolve(model="openai/gpt-5-mini", models=["openai/gpt-5-nano", "openai/o1-pro"]))
    assert named == [("model", "openai/gpt-5-mini"), ("models[0]", "openai/gpt-5-nano"), ("models[1]", "openai/o1-pro")]


def test_the_plugin_on_a_plain_model_needs_that_model_and_the_preset(resolve: Any) -> None:
    named = requested_models(*resolve(model="openai/gpt-5", plugins=[{"id": "fusion", "model": "x/judge"}]))
    assert named == [("model", "fusion/trio"), ("plugins[0].model", "x/judge"), ("model", "openai/gpt-5")]


def test_scope_refuses_the_first_model_outside_it_with_403(resolve: Any) -> None:
    plugin = {"id": "fusion", "analysis_models": ["fake/a", "openai/o1-pro"]}
    named = requested_models(*resolve(model="fusion/trio", plugins=[plugin]))
    check_scope(client("*"), named)
    with pytest.raises(ModelNotAllowed) as caught:
        check_scope(client("fusion/*", "fake/*"), named)
    assert caught.value.status_code == 403 and caught.value.code == "model_not_allowed"
    assert caught.value.param == "plugins[0].analysis_models[1]"
    assert "team-a" in caught.value.message and "openai/o1-pro" in caught.value.message


def test_scope_patterns_are_case_sensitive_fnmatch() -> None:
    assert client("fusion/*").allows("fusion/quality")
    assert not client("fusion/*").allows("openrouter/fusion")
    assert not client("openai/*").allows("OpenAI/gpt-5")
    assert client("openai/gpt-5*").allows("openai/gpt-5:free")


def test_unset_guards_allow_everything(resolve: Any) -> None:
    chat, plan = resolve(model="fusion/trio", max_tokens=10**6, messages=[{"role": "user", "content": "x"}] * 500)
    guard(GuardsConfig(), chat, plan)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}] * 4}, "messages"),
        ({"max_tokens": 101}, "max_tokens"),
        ({"max_completion_tokens": 101}, "max_completion_tokens"),
        ({"plugins": [{"id": "fusion", "max_completion_tokens": 101}]}, "plugins[0].max_completion_tokens"),
        (
            {"plugins": [{"id": "fusion", "analysis_models": ["fake/a", "fake/b", "fake/c"]}]},
            "plugins[0].analysis_models",
        ),
        ({"model": "fusion/trio"}, "model"),
    ],
)
def test_guards_refuse_with_400_naming_the_field(resolve: Any, body: dict[str, Any], param: str) -> None:
    chat, plan = resolve(**{"model": "fusion/duo", **body})
    guards = GuardsConfig(max_messages=3, max_tokens=100, max_panel_size=2)
    with pytest.raises(InvalidRequest) as caught:
        guard(guards, chat, plan)
    assert caught.value.status_code == 400 and caught.value.param == param


def test_guards_at_their_limits_pass(resolve: Any) -> None:
    chat, plan = resolve(model="fusion/duo", max_tokens=100, messages=[{"role": "user", "content": "x"}] * 3)
    guard(GuardsConfig(max_messages=3, max_tokens=100, max_panel_size=2), chat, plan)


def test_pass_through_requests_are_guarded_too(resolve: Any) -> None:
    chat, plan = resolve(model="openai/gpt-5", max_tokens=500)
    assert plan is None
    with pytest.raises(InvalidRequest, match="max_tokens"):
        guard(GuardsConfig(max_tokens=100), chat, plan)


@pytest.mark.parametrize("size", [0, 9])
def test_the_panel_guard_stays_within_1_to_8(size: int) -> None:
    with pytest.raises(ValueError):
        GuardsConfig(max_panel_size=size)


TOOL = {"type": "openrouter:fusion", "parameters": {"analysis_models": ["x/p1", "x/p2"], "model": "x/judge"}}


def test_tool_mode_names_its_preset_panel_judge_and_the_outer_model(resolve: Any) -> None:
    chat, plan = resolve(model="x/outer", tools=[{"type": "function", "function": {"name": "f"}}, TOOL])
    assert requested_models(chat, plan) == [
        ("model", "fusion/trio"),
        ("tools[1].parameters.analysis_models[0]", "x/p1"),
        ("tools[1].parameters.analysis_models[1]", "x/p2"),
        ("tools[1].parameters.model", "x/judge"),
        ("model", "x/outer"),
    ]
    preset = {"type": "fusion", "parameters": {"preset": "duo"}}
    chat, plan = resolve(model="x/outer", tools=[preset])
    # The preset's panel is the operator's choice; the caller's model judges and answers.
    assert requested_models(chat, plan) == [("tools[0].parameters.preset", "fusion/duo"), ("model", "x/outer")]
    assert [(u.slug, u.role, u.chosen) for u in reach_of(chat, plan).models] == [
        ("fake/a", "panel", False),
        ("fake/b", "panel", False),
        ("x/outer", "judge", True),
        ("x/outer", "outer", True),
    ]


def test_preset_models_are_listed_as_the_presets_not_the_clients(resolve: Any) -> None:
    chat, plan = resolve(model="fusion/trio", plugins=[{"id": "fusion", "judge_fallbacks": ["x/j2"]}])
    assert reach_of(chat, plan).models == (
        ModelUse("fake/a", "panel", "model", False),
        ModelUse("fake/b", "panel", "model", False),
        ModelUse("fake/c", "panel", "model", False),
        ModelUse("fake/judge", "judge", "model", False),
        ModelUse("x/j2", "judge", "plugins[0].judge_fallbacks[0]", True),
        ModelUse("fake/synth", "synthesizer", "model", False),
    )
    # A client-chosen judge also writes the answer when the preset names no synthesizer.
    chat, plan = resolve(model="fusion/duo", plugins=[{"id": "fusion", "model": "x/j"}])
    assert [u for u in reach_of(chat, plan).models if u.role == "synthesizer"] == [
        ModelUse("x/j", "synthesizer", "plugins[0].model", True)
    ]
    # With the panel off, neither panel nor judge is called: only the synthesizer.
    chat, plan = resolve(model="fusion/trio", plugins=[{"id": "fusion", "enabled": False, "model": "x/j"}])
    assert [u.role for u in reach_of(chat, plan).models] == ["synthesizer"]


@pytest.mark.parametrize(
    ("parameters", "param"),
    [
        ({"max_completion_tokens": 1_000_000}, "tools[0].parameters.max_completion_tokens"),
        ({"reasoning": {"max_tokens": 101}}, "tools[0].parameters.reasoning.max_tokens"),
        ({"analysis_models": ["x/1", "x/2", "x/3"]}, "tools[0].parameters.analysis_models"),
        ({"preset": "trio"}, "model"),
    ],
)
def test_guards_hold_in_tool_mode(resolve: Any, parameters: dict[str, Any], param: str) -> None:
    chat, plan = resolve(model="x/outer", tools=[{"type": "openrouter:fusion", "parameters": parameters}])
    with pytest.raises(InvalidRequest) as caught:
        guard(GuardsConfig(max_tokens=100, max_panel_size=2), chat, plan)
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "x/m", "reasoning": {"max_tokens": 101}}, "reasoning.max_tokens"),
        ({"model": "fusion/duo", "plugins": [{"id": "fusion", "reasoning": {"max_tokens": 101}}]},
         "plugins[0].reasoning.max_tokens"),
    ],
)  # fmt: skip
def test_reasoning_token_limits_are_guarded(resolve: Any, body: dict[str, Any], param: str) -> None:
    chat, plan = resolve(**body)
    with pytest.raises(InvalidRequest) as caught:
        guard(GuardsConfig(max_tokens=100), chat, plan)
    assert caught.value.param == param
