"""The documentation keeps up with the code: every setting and environment variable, presets, the eval format.

The settings reference is generated from the settings models by docs/gen_config.py (an MkDocs hook);
these tests check that the generation covers every field of every model with a description, that
every environment variable the code reads is documented on the reference page, and that the
documented shapes (presets, the fusion plugin, the eval data format) match the models.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import tomllib
import typing
from pathlib import Path
from types import ModuleType, SimpleNamespace, UnionType

from pydantic import BaseModel

from openfusion.evaluation.dataset import parse_task
from openfusion.evaluation.scoring import rubric_score
from openfusion.pipeline.plan import FusionPlugin
from openfusion.presets import Preset
from openfusion.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SRC = ROOT / "src" / "openfusion"


def _gen_config() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config", DOCS / "gen_config.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_config", module)
    spec.loader.exec_module(module)
    return module


gen_config = _gen_config()


def _model_of(annotation: object) -> type[BaseModel] | None:
    """The settings model a field holds (alone, optional, in a list or as dict values), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, UnionType):
        found = [m for m in (_model_of(a) for a in args) if m is not None]
        return found[0] if found else None
    if origin is list and args:
        return _model_of(args[0])
    if origin is dict and len(args) == 2:
        return _model_of(args[1])
    return None


def _every_field(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted paths of every field of `model` and of the models inside it, found independently of gen_config."""
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        child = _model_of(field.annotation)
        path = f"{prefix}{name}"
        if child is not None:
            paths |= _every_field(child, f"{path}.")
            if typing.get_origin(field.annotation) in (list, dict) or type(None) in typing.get_args(field.annotation):
                paths.add(path)  # a list, a table of tables or an optional table has a row of its own
        else:
            paths.add(path)
    return paths


def _rows() -> dict[str, object]:
    return {row.path: row for section in gen_config.sections() for row in section.rows}


def test_the_reference_has_a_row_for_every_settings_field() -> None:
    expected = _every_field(Settings)
    assert {"retry.max_attempts", "research.search.backend", "keys.key_sha256", "pricing.models.prompt"} <= expected
    missing = expected - set(_rows())
    assert not missing, f"settings fields missing from the generated reference: {sorted(missing)}"


def test_every_settings_field_is_described() -> None:
    undescribed = sorted(path for path, row in _rows().items() if not row.description.strip())
    assert not undescribed, (
        f"settings fields without a description: {undescribed}. Write a comment above the field in its "
        "model, or add it to FALLBACK_DESCRIPTIONS in docs/gen_config.py"
    )


def test_every_setting_that_the_environment_can_set_names_its_variable() -> None:
    rows = _rows()
    assert rows["default_preset"].env == "OPENFUSION_DEFAULT_PRESET"
    assert rows["retry.max_attempts"].env == "OPENFUSION_RETRY__MAX_ATTEMPTS"
    assert rows["research.fetch.allow_hosts"].env == "OPENFUSION_RESEARCH__FETCH__ALLOW_HOSTS"
    assert rows["keys"].env == "OPENFUSION_KEYS"  # a whole list, in JSON
    assert rows["keys.name"].env is None  # inside a list: set through the list
    rendered = gen_config.render()
    for path, row in rows.items():
        assert f"`{row.key}`" in rendered, path
        if row.env:
            assert f"`{row.env}`" in rendered, path


def test_the_documented_variable_names_are_the_ones_settings_reads(monkeypatch) -> None:
    """The names in the table set what they claim: each one, set in the environment, changes its setting."""
    rows = _rows()
    samples = {
        "default_preset": ("budget", "budget"),
        "workers": ("auto", "auto"),
        "retry.max_attempts": ("5", 5),
        "research.fetch.max_chars": ("999", 999),
        "limits.redis_prefix": ("tenant-b", "tenant-b"),
        "server.forwarded_allow_ips": ('["10.0.0.5"]', ["10.0.0.5"]),
    }
    for path, (text, _) in samples.items():
        monkeypatch.setenv(rows[path].env, text)
    settings = Settings()
    for path, (_, value) in samples.items():
        current: object = settings
        for part in path.split("."):
            current = getattr(current, part)
        assert current == value, path


def _read_variables() -> set[str]:
    """Environment variables the code reads: os.environ / environ mappings / getenv in src, the key variables
    of the built-in providers and search backends, and the OPENFUSION_* variables the Docker image sets."""
    names: set[str] = set()
    read = re.compile(r"""environ(?:\.get)?\s*[\[(]\s*["']([A-Z][A-Z0-9_]+)["']|getenv\(\s*["']([A-Z][A-Z0-9_]+)["']""")
    key_env = re.compile(r"""KEY_ENV\b[^=\n]*=\s*(\{[^}]*\}|"[A-Z][A-Z0-9_]+")""")
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for match in read.finditer(text):
            names.add(match.group(1) or match.group(2))
        for match in key_env.finditer(text):
            names.update(re.findall(r'"([A-Z][A-Z0-9_]+)"', match.group(1)))
    builtins = tomllib.loads((SRC / "upstream" / "builtin_providers.toml").read_text(encoding="utf-8"))
    names.update(p["api_key_env"] for p in builtins["providers"] if p.get("api_key_env"))
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text(encoding="utf-8")
    names.update(re.findall(r"\b(OPENFUSION_[A-Z0-9_]+)\b", dockerfile))
    return names


def test_every_environment_variable_the_code_reads_is_on_the_reference_page() -> None:
    variables = _read_variables()
    # The search must find what is known to be there, or it proves nothing.
    assert {
        "OPENFUSION_CONFIG",
        "DATABASE_URL",
        "REDIS_URL",
        "XDG_STATE_HOME",
        "OPENROUTER_API_KEY",
        "ANTHROPIC_API_KEY",
        "BRAVE_API_KEY",
        "OPENFUSION_API_KEY",
        "OPENFUSION_PORT",
    } <= variables
    page = (DOCS / gen_config.REFERENCE_PAGE).read_text(encoding="utf-8") + gen_config.render()
    missing = sorted(name for name in variables if f"`{name}`" not in page)
    assert not missing, (
        f"environment variables the code reads, missing from docs/{gen_config.REFERENCE_PAGE}: {missing}"
    )


COMPOSE_FILES = ("compose.yaml", "compose.gateway.yaml")


def test_the_compose_variables_are_documented() -> None:
    compose = "".join((ROOT / "docker" / name).read_text(encoding="utf-8") for name in COMPOSE_FILES)
    variables = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", compose))
    assert "POSTGRES_PASSWORD" in variables
    docs = "".join(path.read_text(encoding="utf-8") for path in DOCS.rglob("*.md"))
    missing = sorted(name for name in variables if name not in docs)
    assert not missing, f"variables of the compose files missing from docs/: {missing}"


def test_the_reference_page_holds_the_marker_the_hook_replaces() -> None:
    markdown = (DOCS / gen_config.REFERENCE_PAGE).read_text(encoding="utf-8")
    assert markdown.count(gen_config.MARKER) == 1
    page = SimpleNamespace(file=SimpleNamespace(src_uri=gen_config.REFERENCE_PAGE))
    built = gen_config.on_page_markdown(markdown, page, None, None)
    assert gen_config.MARKER not in built
    assert "| `max_attempts` | `OPENFUSION_RETRY__MAX_ATTEMPTS` |" in built
    other = SimpleNamespace(file=SimpleNamespace(src_uri="index.md"))
    assert gen_config.on_page_markdown(markdown, other, None, None) == markdown


def _table_keys(page: str, heading: str) -> set[str]:
    """The first-column names of the first table after `heading` (comma-separated names allowed)."""
    text = (DOCS / page).read_text(encoding="utf-8")
    after = text[text.index(heading) :]
    table = re.search(r"\n(\|.*\|\n)+", after)
    assert table is not None
    keys: set[str] = set()
    for line in table.group(0).strip().splitlines()[2:]:
        keys.update(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return keys


def test_every_preset_field_is_in_the_preset_table() -> None:
    missing = set(Preset.model_fields) - _table_keys("presets.md", "## Preset files")
    assert not missing, f"preset fields missing from docs/presets.md: {sorted(missing)}"


def test_every_plugin_field_is_in_the_plugin_table() -> None:
    documented = _table_keys("presets.md", "## Per-request overrides: the fusion plugin") | {"id"}
    missing = set(FusionPlugin.model_fields) - documented
    assert not missing, f"fusion plugin fields missing from docs/presets.md: {sorted(missing)}"


def test_the_documented_eval_record_is_a_valid_task_and_scores_as_the_page_says() -> None:
    text = (DOCS / "evaluation.md").read_text(encoding="utf-8")
    section = text[text.index("## The data format") :]
    block = re.search(r"```json\n(.*?)```", section, re.S)
    assert block is not None
    record = json.loads(block.group(1))
    record["answer"] = json.dumps(record["answer"])  # as DRACO stores it: the rubric as a JSON string
    task = parse_task(json.dumps(record))
    assert task.id == "fin-1"
    assert [c.key for c in task.criteria] == [
        "factual-accuracy/c1",
        "factual-accuracy/c2",
        "factual-accuracy/c3",
        "presentation-quality/p1",
    ]
    met = {"factual-accuracy/c1", "factual-accuracy/c3", "presentation-quality/p1"}
    score = rubric_score([(c.weight, c.key in met) for c in task.criteria])
    assert score == 0.25
    assert "scores (10 + 5 − 10) / 20 = 0.25" in section


def test_the_readme_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [t for t in re.findall(r"\]\(([^)]+)\)", readme) if not t.startswith(("http://", "https://", "#"))]
    assert any(t.startswith("docs/") for t in targets)
    missing = [t for t in targets if not (ROOT / t.split("#", 1)[0]).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_the_readme_quickstart_commands_are_the_getting_started_page_s() -> None:
    """The README's two commands (CI runs the second) are the ones the getting-started page walks through."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    page = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    quickstart = readme[readme.index("## Quickstart") :]
    commands = re.findall(r"```bash\n(.*?)```", quickstart, re.S)[:2]
    assert commands[1].strip() == ".venv/bin/pip install '.[test]' && .venv/bin/python -m pytest"
    for command in commands:
        assert f"```bash\n{command}```" in page
