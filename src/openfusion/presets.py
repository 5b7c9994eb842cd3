"""Presets as data: one TOML file per preset, `fusion/<name>` selects `<name>.toml`."""

from __future__ import annotations

import logging
import tomllib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from openfusion.config_errors import describe
from openfusion.errors import ConfigError
from openfusion.protocol import ModelSlug
from openfusion.upstream.web.tools import ToolSpecError, excluded_domains, normalize_tools

if TYPE_CHECKING:
    from openfusion.upstream.providers import ProviderRegistry

log = logging.getLogger("openfusion")

Seconds = Annotated[float, Field(gt=0, le=3600)]
# How long a cached run may be served: up to 30 days.
CacheSeconds = Annotated[float, Field(gt=0, le=30 * 24 * 3600)]
Fallbacks = Annotated[list[ModelSlug], Field(max_length=4)]

# OpenRouter gives every inner call 300 s; the same generous default here.
DEFAULT_TIMEOUT_S = 300.0

DEFAULT_TOOLS = ("web_search", "web_fetch")

# The bare fusion slugs and the preset each one means (None: the configured default preset).
_ALIASES: dict[str, str | None] = {
    "fusion": None,
    "openrouter/fusion": None,
    "openrouter/fusion-flash": "fast",
}


class Preset(BaseModel):
    """A named panel, judge and synthesizer with their limits."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    analysis_models: list[ModelSlug] = Field(min_length=1, max_length=8)
    model: ModelSlug
    synthesis_model: ModelSlug | None = None
    max_tool_calls: int = Field(default=4, ge=1, le=16)
    max_completion_tokens: int = Field(default=16000, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    tools: list[str | dict[str, Any]] = Field(default_factory=lambda: list(DEFAULT_TOOLS))
    judge_tools: bool = True
    # Resilience: per-stage time limits, the panel quorum, and fallback models.
    panel_timeout_s: Seconds = DEFAULT_TIMEOUT_S
    panel_deadline_s: Seconds | None = None
    min_successful: int = Field(default=1, ge=1, le=8)
    judge_timeout_s: Seconds = DEFAULT_TIMEOUT_S
    synth_timeout_s: Seconds = DEFAULT_TIMEOUT_S
    judge_fallbacks: Fallbacks = Field(default_factory=list)
    synthesis_fallbacks: Fallbacks = Field(default_factory=list)
    # The result cache (off unless set): identical requests within this many seconds get the first run's answer.
    cache_ttl_s: CacheSeconds | None = None
    cache_degraded: bool = False  # also cache runs with a failed panelist, judge or synthesizer
    cache_research: bool = False  # also cache runs that researched the web (their sources may go stale)

    @model_validator(mode="after")
    def _consistent(self) -> Preset:
        slugs = [*self.analysis_models, self.model, self.synthesis_model or ""]
        for slug in slugs + self.judge_fallbacks + self.synthesis_fallbacks:
            if is_fusion_slug(slug):
                raise ValueError(f"a preset cannot use the fusion model {slug!r} inside itself")
        if self.min_successful > len(self.analysis_models):
            raise ValueError("min_successful cannot exceed the number of analysis_models")
        normalize_tools(self.tools)  # unknown tool names are a configuration error
        try:
            excluded_domains(self.tools)  # as are exclusions that would not be enforced
        except ToolSpecError as exc:
            raise ValueError(f"tools{exc.where}: {exc}") from None
        return self

    @property
    def synthesizer(self) -> str:
        return self.synthesis_model or self.model

    @property
    def slugs(self) -> list[str]:
        """Every model the preset may call (panel, judge, synthesizer, fallbacks), each once, in that order."""
        named = [*self.analysis_models, self.model, self.synthesizer, *self.judge_fallbacks, *self.synthesis_fallbacks]
        return list(dict.fromkeys(named))


def base_slug(slug: str) -> str:
    """The slug without a `:variant` suffix (`openrouter/fusion:free` -> `openrouter/fusion`)."""
    return slug.split(":", 1)[0].strip().lower()


def is_fusion_slug(slug: str) -> bool:
    """Whether a model slug names fusion itself (any alias, preset or variant)."""
    base = base_slug(slug)
    return base in _ALIASES or base.startswith(("fusion/", "openrouter/fusion"))


def preset_name_for(slug: str, default_preset: str) -> str | None:
    """The preset a fusion slug selects, or None for an unknown `openrouter/fusion…` slug."""
    base = base_slug(slug)
    if base in _ALIASES:
        return _ALIASES[base] or default_preset
    if base.startswith("fusion/"):
        return base.removeprefix("fusion/") or None
    return None


def shipped_presets_dir() -> Path:
    """The presets shipped with openfusion: inside the wheel, or the source tree's `presets/` when editable."""
    packaged = Path(str(resources.files("openfusion"))) / "presets"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "presets"


def load_presets(*dirs: Path | None) -> dict[str, Preset]:
    """Load every `*.toml` preset; a later directory adds to or overrides an earlier one."""
    presets: dict[str, Preset] = {}
    for directory in dirs:
        if directory is None:
            continue
        if not directory.is_dir():
            raise ConfigError(f"presets directory not found: {directory}")
        for path in sorted(directory.glob("*.toml")):
            preset = _load_preset(path)
            presets[preset.name] = preset
    return presets


def _load_preset(path: Path) -> Preset:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        data.setdefault("name", path.stem)
        if data["name"] != path.stem:
            raise ConfigError(f"preset {path}: name {data['name']!r} must match the file name {path.stem!r}")
        if data["name"] != data["name"].lower():
            raise ConfigError(f"preset {path}: preset names are lower-case (slugs are matched case-insensitively)")
        return Preset(**data)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"preset {path} is not valid TOML: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(describe(exc, model=Preset, source=f"preset {path} is invalid")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"preset {path} cannot be read: {exc}") from exc


def check_served(presets: dict[str, Preset], *, own_dir: Path | None, registry: ProviderRegistry) -> None:
    """At start-up: every model of every preset must have a provider, as far as can be known offline.

    A preset of the user's (in `own_dir`) naming a model no provider serves is a ConfigError; a shipped one only a
    warning, since the shipped presets name OpenRouter's slugs and a server with other keys may never run them. A
    provider's patterns decide (OpenRouter's `*` serves any slug: a misspelt model is then found upstream, at the
    request). Nothing is checked when no provider is usable at all: that has its own warning.
    """
    if registry.unusable() is not None:
        return
    providers = ", ".join(provider.name for provider in registry.providers)
    shipped: list[tuple[str, list[str]]] = []
    for name, preset in sorted(presets.items()):
        unserved = [slug for slug in preset.slugs if not registry.serves(slug)]
        if not unserved:
            continue
        path = own_dir / f"{name}.toml" if own_dir is not None else None
        if path is None or not path.is_file():
            shipped.append((name, unserved))
            continue
        raise ConfigError(
            f"preset {name!r} ({path}) names models no configured provider serves: "
            f"{', '.join(map(repr, unserved))} (providers: {providers}). "
            f"To serve {unserved[0]!r}, {registry.how_to_serve(unserved[0])}."
        )
    if shipped:
        log.warning(
            "shipped presets %s name models no configured provider serves (providers: %s), e.g. %r: fusion requests "
            "for them will fail; set OPENROUTER_API_KEY, or replace them with presets of your own of the same names "
            "(--presets)",
            ", ".join(name for name, _ in shipped),
            providers,
            shipped[0][1][0],
        )
