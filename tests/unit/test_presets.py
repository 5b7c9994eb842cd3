"""Fusion slugs and preset files."""

from __future__ import annotations

from pathlib import Path

import pytest

from openfusion.errors import ConfigError
from openfusion.presets import (
    Preset,
    base_slug,
    is_fusion_slug,
    load_presets,
    preset_name_for,
    shipped_presets_dir,
)

QUALITY_PANEL = ["~anthropic/claude-opus-latest", "~openai/gpt-latest", "~google/gemini-pro-latest"]
BUDGET_PANEL = ["~google/gemini-flash-latest", "deepseek/deepseek-v3.2", "~moonshotai/kimi-latest"]
VALID = 'analysis_models = ["a/one", "b/two"]\nmodel = "j/judge"\n'


# --- slugs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slug", "base", "fusion", "preset"),
    [
        ("fusion", "fusion", True, "quality"),
        ("openrouter/fusion", "openrouter/fusion", True, "quality"),
        ("openrouter/fusion-flash", "openrouter/fusion-flash", True, "fast"),
        ("fusion/budget", "fusion/budget", True, "budget"),
        ("openrouter/fusion:free", "openrouter/fusion", True, "quality"),
        ("FUSION/quality:nitro", "fusion/quality", True, "quality"),
        ("openrouter/fusion-flash:free", "openrouter/fusion-flash", True, "fast"),
        ("openrouter/fusion-unknown", "openrouter/fusion-unknown", True, None),
        ("fusion/", "fusion/", True, None),
        ("openai/gpt-5", "openai/gpt-5", False, None),
        ("anthropic/claude-opus-4:thinking", "anthropic/claude-opus-4", False, None),
        ("~anthropic/claude-opus-latest", "~anthropic/claude-opus-latest", False, None),
        ("fusionist/model", "fusionist/model", False, None),
        ("openrouter/auto", "openrouter/auto", False, None),
    ],
)
def test_slug_table(slug: str, base: str, fusion: bool, preset: str | None) -> None:
    assert base_slug(slug) == base
    assert is_fusion_slug(slug) is fusion
    if fusion:
        assert preset_name_for(slug, "quality") == preset


def test_bare_aliases_follow_the_configured_default() -> None:
    assert preset_name_for("fusion", "budget") == "budget"
    assert preset_name_for("openrouter/fusion:free", "self") == "self"
    # the flash alias is pinned to `fast`, whatever the default
    assert preset_name_for("openrouter/fusion-flash", "budget") == "fast"
    # an explicit preset ignores the default
    assert preset_name_for("fusion/self", "budget") == "self"


# --- shipped presets ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> dict[str, Preset]:
    return load_presets(shipped_presets_dir())


def test_shipped_preset_names(shipped: dict[str, Preset]) -> None:
    assert set(shipped) == {"quality", "budget", "fast", "self"}
    assert all(name == preset.name for name, preset in shipped.items())


def test_shipped_quality(shipped: dict[str, Preset]) -> None:
    quality = shipped["quality"]
    assert quality.analysis_models == QUALITY_PANEL
    assert quality.model == "~anthropic/claude-opus-latest"
    assert quality.synthesizer == "~anthropic/claude-opus-latest"


def test_shipped_budget(shipped: dict[str, Preset]) -> None:
    assert shipped["budget"].analysis_models == BUDGET_PANEL


def test_shipped_presets_are_valid_panels(shipped: dict[str, Preset]) -> None:
    for preset in shipped.values():
        assert 1 <= len(preset.analysis_models) <= 8
        assert not any(is_fusion_slug(slug) for slug in [*preset.analysis_models, preset.synthesizer])
        assert preset.description


# --- loading a presets directory ---------------------------------------------------------------------


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(tmp_path: Path) -> None:
    write(tmp_path, "mine", VALID)
    preset = load_presets(tmp_path)["mine"]
    assert preset.name == "mine"
    assert preset.max_tool_calls == 4
    assert preset.max_completion_tokens == 16000
    assert preset.tools == ["web_search", "web_fetch"]
    assert preset.temperature is None
    assert preset.synthesis_model is None
    assert preset.synthesizer == "j/judge"


def test_synthesis_model_overrides_the_judge(tmp_path: Path) -> None:
    write(tmp_path, "split", VALID + 'synthesis_model = "s/synth"\n')
    preset = load_presets(tmp_path)["split"]
    assert preset.model == "j/judge"
    assert preset.synthesizer == "s/synth"


def test_explicit_matching_name_is_accepted(tmp_path: Path) -> None:
    write(tmp_path, "named", 'name = "named"\n' + VALID)
    assert load_presets(tmp_path)["named"].name == "named"


def test_user_dir_adds_and_overrides(tmp_path: Path) -> None:
    write(tmp_path, "quality", 'analysis_models = ["x/only"]\nmodel = "x/judge"\n')
    write(tmp_path, "extra", VALID)
    presets = load_presets(shipped_presets_dir(), tmp_path)
    assert set(presets) == {"quality", "budget", "fast", "self", "extra"}
    assert presets["quality"].analysis_models == ["x/only"]
    assert presets["quality"].model == "x/judge"
    assert presets["budget"].analysis_models == BUDGET_PANEL


def test_later_dir_wins(tmp_path: Path) -> None:
    write(tmp_path / "a", "p", 'analysis_models = ["a/1"]\nmodel = "a/j"\n')
    write(tmp_path / "b", "p", 'analysis_models = ["b/1"]\nmodel = "b/j"\n')
    assert load_presets(tmp_path / "a", tmp_path / "b")["p"].model == "b/j"
    assert load_presets(tmp_path / "b", tmp_path / "a")["p"].model == "a/j"


def test_none_dirs_are_skipped_and_non_toml_ignored(tmp_path: Path) -> None:
    write(tmp_path, "p", VALID)
    (tmp_path / "README.md").write_text("not a preset", encoding="utf-8")
    assert set(load_presets(None, tmp_path, None)) == {"p"}


def test_every_loaded_preset_is_reachable_from_its_slug(tmp_path: Path) -> None:
    """`fusion/<name>` must select `<name>.toml`; slugs are matched lower-cased, so a mixed-case file name
    must either be reachable or be refused at load time, never silently unreachable."""
    write(tmp_path, "Research", VALID)
    try:
        presets = load_presets(tmp_path)
    except ConfigError as exc:
        assert "Research" in exc.message
        return
    for name in presets:
        assert preset_name_for(f"fusion/{name}", "quality") in presets


def test_missing_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="presets directory not found"):
        load_presets(tmp_path / "nope")


PANEL_9 = "[" + ", ".join(f'"m/{i}"' for i in range(9)) + "]"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("analysis_models = [\nmodel = 1", "not valid TOML"),
        ('analysis_models = []\nmodel = "j/j"\n', "analysis_models"),
        (f'analysis_models = {PANEL_9}\nmodel = "j/j"\n', "analysis_models"),
        ('model = "j/j"\n', "analysis_models"),
        ('analysis_models = ["a/1"]\n', "model"),
        (VALID + "max_tool_calls = 0\n", "max_tool_calls"),
        (VALID + "max_tool_calls = 17\n", "max_tool_calls"),
        (VALID + "max_completion_tokens = 0\n", "max_completion_tokens"),
        (VALID + "temperature = 3\n", "temperature"),
        (VALID + "temperature = -0.5\n", "temperature"),
        ('analysis_models = ["a/1", "fusion/budget"]\nmodel = "j/j"\n', "fusion/budget"),
        ('analysis_models = ["a/1"]\nmodel = "openrouter/fusion"\n', "openrouter/fusion"),
        (VALID + 'synthesis_model = "openrouter/fusion-flash:free"\n', "openrouter/fusion-flash:free"),
        (VALID + "panel_size = 3\n", "panel_size"),
        ('name = "other"\n' + VALID, "must match the file name"),
        (
            VALID + 'tools = [{type = "web_fetch", parameters = {excluded_domains = "a.com"}}]\n',
            "tools[0].parameters.excluded_domains: must be a list of domain names",
        ),
        (VALID + 'tools = [{type = "web_fetch", parameters = {blocked_domains = [1]}}]\n', "blocked_domains"),
    ],
)
def test_invalid_preset_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, "broken", text)
    with pytest.raises(ConfigError) as info:
        load_presets(tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert fragment in message
    assert info.value.message == message


def test_non_utf8_preset_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes((VALID + 'description = "qualité"\n').encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_presets(tmp_path)
    assert str(path) in info.value.message


def test_fusion_inside_preset_message_explains_why(tmp_path: Path) -> None:
    write(tmp_path, "loop", 'analysis_models = ["fusion"]\nmodel = "j/j"\n')
    with pytest.raises(ConfigError, match="cannot use the fusion model 'fusion'"):
        load_presets(tmp_path)


def test_one_bad_file_fails_the_whole_load(tmp_path: Path) -> None:
    write(tmp_path, "good", VALID)
    write(tmp_path, "zbad", VALID + "max_tool_calls = 99\n")
    with pytest.raises(ConfigError, match="zbad"):
        load_presets(tmp_path)
