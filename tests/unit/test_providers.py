"""The provider registry: precedence, patterns, keys from the environment, and key hygiene."""

from __future__ import annotations

from typing import Any

import pytest

from openfusion.errors import ConfigError, ModelNotFound
from openfusion.settings import ProviderConfig, Settings
from openfusion.upstream.providers import Provider, ProviderRegistry, builtin_provider_configs

SECRET = "sk-very-secret-value-123"
BUILTIN_NAMES = [
    "openai",
    "anthropic",
    "google",
    "deepseek",
    "groq",
    "mistral",
    "xai",
    "together",
    "ollama",
    "openrouter",
]


def provider(name: str, models: list[str], **fields: Any) -> ProviderConfig:
    return ProviderConfig(name=name, base_url=f"http://{name}.test/v1", models=models, **fields)


def registry(*configs: ProviderConfig, builtins: bool = True, **environ: str) -> ProviderRegistry:
    return ProviderRegistry.from_settings(Settings(providers=list(configs), builtin_providers=builtins), environ)


def names(reg: ProviderRegistry) -> list[str]:
    return [p.name for p in reg.providers]


# --- precedence and patterns -------------------------------------------------------------------------


def test_builtin_configs_in_precedence_order() -> None:
    configs = builtin_provider_configs()
    assert [c.name for c in configs] == BUILTIN_NAMES
    assert configs[-1].models == ["*"]
    assert configs[-1].strip_prefix is False
    assert all(c.api_key_env for c in configs if c.name != "ollama")


def test_configured_providers_come_before_builtins() -> None:
    reg = registry(provider("zeta", ["openai/*"]), provider("alpha", ["x/*"]), OPENAI_API_KEY="k")
    assert names(reg)[:3] == ["zeta", "alpha", "openai"]
    assert reg.resolve("openai/gpt-5").provider.name == "zeta"
    assert not reg.providers[0].builtin
    assert reg.providers[2].builtin


def test_first_match_in_file_order_wins() -> None:
    reg = registry(
        provider("narrow", ["local/llama-*"]),
        provider("wide", ["local/*"]),
        provider("all", ["*"]),
        builtins=False,
    )
    assert reg.resolve("local/llama-3").provider.name == "narrow"
    assert reg.resolve("local/qwen").provider.name == "wide"
    assert reg.resolve("other/model").provider.name == "all"


@pytest.mark.parametrize(
    ("pattern", "slug", "matches"),
    [
        ("acme/*", "acme/model-1", True),
        ("acme/*", "acme/nested/model", True),
        ("acme/*", "acmex/model", False),
        ("acme/*", "ACME/model", False),  # case-sensitive
        ("acme/gpt-?", "acme/gpt-4", True),
        ("acme/gpt-?", "acme/gpt-40", False),
        ("acme/[ab]*", "acme/beta", True),
        ("acme/[ab]*", "acme/gamma", False),
        ("exact/slug", "exact/slug", True),
        ("exact/slug", "exact/slug:free", False),
        ("~*", "~anthropic/claude-opus-latest", True),
    ],
)
def test_fnmatch_patterns(pattern: str, slug: str, matches: bool) -> None:
    assert Provider(provider("p", [pattern])).serves(slug) is matches


def test_any_of_several_patterns() -> None:
    p = Provider(provider("p", ["a/*", "b/*"]))
    assert p.serves("a/x")
    assert p.serves("b/x")
    assert not p.serves("c/x")


@pytest.mark.parametrize(
    ("strip", "slug", "upstream"),
    [
        (True, "local/llama3", "llama3"),
        (True, "local/org/model", "org/model"),
        (True, "noslash", "noslash"),
        (False, "local/llama3", "local/llama3"),
    ],
)
def test_strip_prefix(strip: bool, slug: str, upstream: str) -> None:
    reg = registry(provider("p", ["*"], strip_prefix=strip), builtins=False)
    route = reg.resolve(slug)
    assert route.slug == slug
    assert route.upstream_model == upstream


# --- built-ins and their keys -----------------------------------------------------------------------


def test_no_keys_means_only_ollama() -> None:
    assert names(registry()) == ["ollama"]


def test_builtins_off() -> None:
    assert names(registry(builtins=False, OPENAI_API_KEY="k")) == []


@pytest.mark.parametrize(
    ("env", "name", "slug", "upstream"),
    [
        ("OPENAI_API_KEY", "openai", "openai/gpt-5", "gpt-5"),
        ("ANTHROPIC_API_KEY", "anthropic", "anthropic/claude-opus-4", "claude-opus-4"),
        ("GEMINI_API_KEY", "google", "google/gemini-2.5-pro", "gemini-2.5-pro"),
        ("DEEPSEEK_API_KEY", "deepseek", "deepseek/deepseek-chat", "deepseek-chat"),
        ("MISTRAL_API_KEY", "mistral", "mistralai/mistral-large", "mistral-large"),
        ("XAI_API_KEY", "xai", "x-ai/grok-4", "grok-4"),
    ],
)
def test_builtin_active_with_its_key(env: str, name: str, slug: str, upstream: str) -> None:
    reg = registry(**{env: SECRET})
    assert names(reg) == [name, "ollama"]
    route = reg.resolve(slug)
    assert route.provider.name == name
    assert route.provider.builtin
    assert route.upstream_model == upstream
    assert route.provider.headers()["Authorization"] == f"Bearer {SECRET}"


def test_blank_key_does_not_activate() -> None:
    assert names(registry(OPENAI_API_KEY="   ", ANTHROPIC_API_KEY="")) == ["ollama"]


def test_key_is_stripped() -> None:
    reg = registry(OPENAI_API_KEY=f"  {SECRET}\n")
    assert reg.resolve("openai/x").provider.headers()["Authorization"] == f"Bearer {SECRET}"


def test_ollama_needs_no_key() -> None:
    route = registry().resolve("ollama/llama3.2")
    assert route.provider.name == "ollama"
    assert route.provider.api_key is None
    assert route.upstream_model == "llama3.2"
    assert "Authorization" not in route.provider.headers()


def test_openrouter_is_last_and_takes_the_full_slug() -> None:
    reg = registry(OPENROUTER_API_KEY="or-key", OPENAI_API_KEY="oa-key")
    assert names(reg)[-1] == "openrouter"
    assert reg.resolve("openai/gpt-5").provider.name == "openai"
    route = reg.resolve("anthropic/claude-opus-4")
    assert route.provider.name == "openrouter"
    assert route.upstream_model == "anthropic/claude-opus-4"
    assert reg.resolve("~anthropic/claude-opus-latest").upstream_model == "~anthropic/claude-opus-latest"


def test_configured_provider_replaces_builtin_of_same_name() -> None:
    reg = registry(provider("openai", ["gpt-*"]), OPENAI_API_KEY="k")
    assert names(reg).count("openai") == 1
    assert reg.resolve("gpt-4o").provider.builtin is False
    with pytest.raises(ModelNotFound):
        reg.resolve("openai/gpt-5")


def test_configured_provider_key_from_environ() -> None:
    reg = registry(provider("mine", ["m/*"], api_key_env="MY_KEY", headers={"X-Title": "t"}), MY_KEY=SECRET)
    assert reg.resolve("m/a").provider.headers() == {"X-Title": "t", "Authorization": f"Bearer {SECRET}"}


def test_configured_provider_without_its_key_is_still_active() -> None:
    reg = registry(provider("mine", ["m/*"], api_key_env="MY_KEY"), builtins=False)
    route = reg.resolve("m/a")
    assert route.provider.api_key is None
    assert route.provider.headers() == {}


def test_duplicate_provider_names() -> None:
    with pytest.raises(ConfigError, match="'twin'"):
        registry(provider("twin", ["a/*"]), provider("twin", ["b/*"]))


# --- not served --------------------------------------------------------------------------------------


def test_unserved_model_message_names_the_key() -> None:
    with pytest.raises(ModelNotFound) as info:
        registry().resolve("openai/gpt-5")
    error = info.value
    assert error.status_code == 404
    assert error.param == "model"
    assert "'openai/gpt-5'" in error.message
    assert "OPENAI_API_KEY" in error.message
    assert "OPENROUTER_API_KEY" in error.message
    assert "ANTHROPIC_API_KEY" not in error.message
    assert "[[providers]]" in error.message


def test_unserved_model_without_builtins_suggests_config() -> None:
    with pytest.raises(ModelNotFound) as info:
        registry(provider("p", ["p/*"]), builtins=False).resolve("q/model")
    assert "_API_KEY" not in info.value.message
    assert "[[providers]]" in info.value.message


# --- the key never leaks -----------------------------------------------------------------------------


def test_provider_repr_and_str_hide_the_key() -> None:
    reg = registry(OPENAI_API_KEY=SECRET)
    route = reg.resolve("openai/gpt-5")
    for text in (repr(route.provider), str(route.provider), repr(route), str(reg.providers), f"{route.provider}"):
        assert SECRET not in text
    assert route.provider.api_key is not None
    assert route.provider.api_key.get_secret_value() == SECRET


def test_headers_are_a_fresh_copy() -> None:
    reg = registry(provider("h", ["*"], headers={"X-A": "1"}), builtins=False)
    p = reg.resolve("x").provider
    p.headers()["X-A"] = "changed"
    assert p.headers() == {"X-A": "1"}
    assert p.config.headers == {"X-A": "1"}


def test_with_only_an_openrouter_key_every_shipped_preset_is_served() -> None:
    from openfusion.presets import load_presets, shipped_presets_dir
    from openfusion.settings import Settings
    from openfusion.upstream.providers import ProviderRegistry

    reg = ProviderRegistry.from_settings(Settings(), {"OPENROUTER_API_KEY": "sk-or"})
    presets = load_presets(shipped_presets_dir())
    assert {"quality", "budget", "fast", "self"} <= set(presets)
    for preset in presets.values():
        for slug in [*preset.analysis_models, preset.model, preset.synthesizer]:
            route = reg.resolve(slug)
            assert route.provider.name == "openrouter" and route.upstream_model == slug
