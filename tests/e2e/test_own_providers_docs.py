"""The documented setup without OpenRouter (docs/configuration/own-providers.md) serves every shipped fusion slug.

The page's config file and presets are taken from the page itself, written to disk and served by the
real server; only the providers' addresses change, all pointed at the fake upstream on loopback
(OpenAI and Ollama are built-ins, so they are replaced by entries of the same name at the fake).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import openai
import pytest

from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream
from openfusion.app import create_app
from openfusion.presets import load_presets, shipped_presets_dir
from openfusion.settings import Settings, load_settings
from openfusion.upstream.providers import builtin_provider_configs

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration" / "own-providers.md"
OPENAI_KEY = "sk-openai-test-key-0123456789"


def _documented_files() -> dict[str, str]:
    """Each TOML block of the page whose first line names its file (`# config.toml`, `# presets/fast.toml`)."""
    files = {}
    for block in re.findall(r"```toml\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S):
        first, _, _ = block.partition("\n")
        name = first.removeprefix("# ").strip()
        assert name.endswith(".toml"), first
        files[name] = block
    return files


@pytest.fixture
def documented(tmp_path: Path) -> tuple[Path, Path]:
    """The page's config file and presets folder, written as a reader would write them."""
    for name, text in _documented_files().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path / "config.toml", tmp_path / "presets"


def _at_the_fake(config: Path, presets: Path, url: str, state: Path) -> Settings:
    """The documented settings, every provider's address replaced by the fake's."""
    documented = load_settings(config, presets_dir=presets)
    names = {p.name for p in documented.providers}
    replaced = [p.model_copy(update={"base_url": f"{url}/v1"}) for p in documented.providers]
    replaced += [
        b.model_copy(update={"base_url": f"{url}/v1"})
        for b in builtin_provider_configs()
        if b.name in ("openai", "ollama") and b.name not in names
    ]
    return documented.model_copy(
        update={
            "providers": replaced,
            "retry": documented.retry.model_copy(update={"initial_backoff_s": 0, "max_backoff_s": 0}),
            "activity": documented.activity.model_copy(update={"path": state / "activity.sqlite3"}),
        }
    )


def test_the_page_overrides_every_shipped_preset(documented: tuple[Path, Path]) -> None:
    config, presets = documented
    shipped = set(load_presets(shipped_presets_dir()))
    assert {f"{name}.toml" for name in shipped} == {p.name for p in presets.iterdir()}
    merged, own = load_presets(shipped_presets_dir(), presets), load_presets(presets)
    assert merged == own  # each shipped preset replaced by the page's, whole
    assert tomllib.loads(config.read_text())["providers"][0]["name"] == "vllm"


@pytest.mark.parametrize(
    ("slug", "preset"),
    [
        ("fusion", "quality"),
        ("openrouter/fusion", "quality"),
        ("openrouter/fusion-flash", "fast"),
        ("fusion/quality", "quality"),
        ("fusion/budget", "budget"),
        ("fusion/fast", "fast"),
        ("fusion/self", "self"),
    ],
)
def test_every_shipped_slug_is_served_by_the_documented_providers(
    slug: str,
    preset: str,
    documented: tuple[Path, Path],
    upstream: FakeUpstream,
    fake_upstream: tuple[FakeUpstream, str],
    tmp_path: Path,
) -> None:
    config, presets = documented
    settings = _at_the_fake(config, presets, fake_upstream[1], tmp_path)
    panel = load_presets(shipped_presets_dir(), presets)[preset].analysis_models
    app = create_app(settings, environ={"OPENAI_API_KEY": OPENAI_KEY})  # no OPENROUTER_API_KEY: OpenRouter is off
    with (
        serve_in_thread(app) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="sk-client-key-unused", max_retries=0) as sdk,
    ):
        answer = sdk.chat.completions.create(model=slug, messages=[{"role": "user", "content": "Hi"}])

    report = answer.model_extra["fusion"]
    assert report["preset"] == preset
    assert [entry["status"] for entry in report["panel"]] == ["ok"] * len(panel)
    assert answer.choices[0].message.content
    sent = {call.model: call for call in upstream.calls}
    for slug_on_panel in panel:
        provider, _, upstream_name = slug_on_panel.partition("/")
        call = sent[upstream_name]  # the prefix stripped, as each provider is configured
        # Only OpenAI's calls carry its key; the local servers get none.
        assert (call.headers.get("authorization") == f"Bearer {OPENAI_KEY}") == (provider == "openai")
