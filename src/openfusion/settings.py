"""Settings: the TOML config file plus `OPENFUSION_*` environment variables, built once and passed down."""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from openfusion.access.config import CorsConfig, GuardsConfig, KeyConfig, LimitsConfig, check_fingerprint_key
from openfusion.activity.config import ActivitySettings
from openfusion.activity.cost import ModelPrice
from openfusion.cache.config import CacheSettings
from openfusion.config_errors import describe, describe_environment, model_in
from openfusion.errors import ConfigError
from openfusion.observability.tracing import TracingSettings
from openfusion.upstream.web.config import ResearchConfig
from openfusion.workers.count import MAX_WORKERS

# How a provider takes OpenRouter's `reasoning` object in a chat completion (`upstream.reasoning`).
ReasoningStyle = Literal["openrouter", "reasoning_effort", "none"]


class ProviderConfig(BaseModel):
    """One OpenAI-compatible endpoint and the model slugs it serves."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    base_url: str = Field(min_length=1)
    api_key_env: str | None = None
    models: list[str] = Field(min_length=1)
    strip_prefix: bool = False
    headers: dict[str, str] = Field(default_factory=dict)
    # Older OpenAI-compatible servers only know `max_tokens`; new OpenAI models only `max_completion_tokens`.
    max_tokens_field: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    # How a request's `reasoning` object is sent: as is (OpenRouter), as `reasoning_effort`, or not at all.
    # "openrouter" also says it is OpenRouter: a pass-through (chat, Responses or Messages) keeps OpenRouter's own
    # fields (`provider`, `plugins`, `preset`...) for it alone.
    reasoning_style: ReasoningStyle = "reasoning_effort"
    # Whether streamed calls may ask for `stream_options.include_usage`.
    stream_usage: bool = True
    # Whether it also speaks the Responses API (`POST {base_url}/responses`): pass-through Responses
    # requests are then forwarded as sent, not translated to chat completions.
    responses: bool = False
    # Whether native Responses requests may be kept on its account (OpenAI's `store`, true by default there). Off:
    # they go with `store: false` (and input items without their ids, which the provider then never stored), since
    # openfusion keeps responses itself for `previous_response_id`; on: the client's `store` goes as sent.
    responses_store: bool = False
    # Whether it also speaks Anthropic's Messages API (`POST {base_url}/messages`, its key as `x-api-key`):
    # pass-through Messages requests are then forwarded as sent, not translated to chat completions.
    messages: bool = False


class RetrySettings(BaseModel):
    """The one retry policy (see `upstream.retry`)."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=3, ge=1, le=10)
    initial_backoff_s: float = Field(default=0.5, ge=0)
    max_backoff_s: float = Field(default=8.0, ge=0)
    # A Retry-After longer than this is not waited for: the 429 goes back to the caller.
    max_retry_after_s: float = Field(default=20.0, ge=0)
    # All attempts of one upstream call and the waits between them, until its answer (a stream: until it
    # starts): no retry or wait goes past it.
    deadline_s: float = Field(default=300.0, gt=0)


class HttpSettings(BaseModel):
    """The shared upstream HTTP client."""

    model_config = ConfigDict(extra="forbid")

    connect_timeout_s: float = Field(default=10.0, gt=0)
    # Per read: a long generation is fine as long as bytes keep coming.
    read_timeout_s: float = Field(default=300.0, gt=0)
    # One attempt of an upstream call: a non-streamed answer must be whole within it; a stream must start
    # within it, and is cut once it has sent nothing but filler (comments, blank lines) for this long.
    call_timeout_s: float = Field(default=300.0, gt=0)
    max_connections: int = Field(default=512, ge=1)
    # "aiohttp" (upstream/transport.py: httpx over aiohttp's pool, fast under load) or "httpx" (httpx's own pool).
    transport: Literal["aiohttp", "httpx"] = "aiohttp"


class ServerSettings(BaseModel):
    """`[server]`: the HTTP server's own limits (connections, request headers, read timeouts)."""

    model_config = ConfigDict(extra="forbid")

    # Open client connections; past this a new one displaces the longest-idle one (or, when every
    # connection is busy, may only ask the health probes). Lowered to fit the open-file limit.
    max_connections: int = Field(default=1000, ge=1)
    # Connections beyond max_connections kept for /healthz and /readyz while every other one is busy.
    probe_connections: int = Field(default=16, ge=0)
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    max_headers: int = Field(default=100, ge=1)
    # From a connection's start (or a request's first byte) to the end of its headers (a request pipelined behind
    # another: counted while the server reads).
    header_timeout_s: float = Field(default=10.0, gt=0)
    # From the end of a request's headers to the end of its body, however steadily it trickles.
    body_timeout_s: float = Field(default=60.0, gt=0)
    # An idle connection between two requests is closed after this long.
    keep_alive_timeout_s: float = Field(default=5.0, gt=0)
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed ("*" for any); unset: uvicorn's default,
    # $FORWARDED_ALLOW_IPS or else 127.0.0.1. Every other peer is known by its own address.
    forwarded_allow_ips: list[str] | None = None


class PricingSettings(BaseModel):
    """Model prices (USD per token) for cost where upstreams do not report it."""

    model_config = ConfigDict(extra="forbid")

    # A provider name: at start-up its OpenRouter-format /models listing fills in the prices not set here.
    refresh_from: str | None = None
    models: dict[str, ModelPrice] = Field(default_factory=dict)


class Settings(BaseSettings):
    """Everything openfusion is configured with. Fields may come from the TOML file or `OPENFUSION_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="OPENFUSION_", extra="forbid", env_nested_delimiter="__")

    default_preset: str = "quality"
    presets_dir: Path | None = None
    providers: list[ProviderConfig] = Field(default_factory=list)
    builtin_providers: bool = True
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    keepalive_interval_s: float = Field(default=2.0, gt=0)
    # On SIGTERM: stop accepting, let in-flight requests finish this long, then cancel them.
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    # Worker processes of `openfusion serve` on one port; "auto": one per CPU this process may use.
    workers: Annotated[int, Field(ge=1, le=MAX_WORKERS)] | Literal["auto"] = 1
    # Several workers: once they have exited this many times each on average (N workers: N times this many exits)
    # within worker_restart_window_s, the server stops, exit status 5, for its process manager to restart it;
    # 0: replace workers however often they die.
    worker_restart_limit: int = Field(default=3, ge=0)
    # The window worker_restart_limit counts worker exits in.
    worker_restart_window_s: float = Field(default=300.0, gt=0)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    # Client keys (see openfusion.access): none configured = an open server.
    api_keys: SecretStr | None = None  # OPENFUSION_API_KEYS: comma-separated, named env-<first 12 hex of SHA-256>
    admin_keys: SecretStr | None = None  # OPENFUSION_ADMIN_KEYS: the same, named admin-<...>, seeing all activity
    keys: list[KeyConfig] = Field(default_factory=list)
    # OPENFUSION_ALLOW_OPEN=1: serve beyond loopback with no client keys (a private network, or something in
    # front that authenticates); without it `openfusion serve` refuses to start so.
    allow_open: bool = False
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    guards: GuardsConfig = Field(default_factory=GuardsConfig)
    cors: CorsConfig = Field(default_factory=CorsConfig)
    redis_url: SecretStr | None = None  # unset: REDIS_URL from the environment, else in-process counters
    # OPENFUSION_FINGERPRINT_KEY: a secret (16 characters or more) keying the fingerprints of wrong keys in the log,
    # the same on every replica given it; unset, each server makes one (its workers share it).
    fingerprint_key: Annotated[SecretStr | None, AfterValidator(check_fingerprint_key)] = None
    research: ResearchConfig = Field(default_factory=ResearchConfig)
    activity: ActivitySettings = Field(default_factory=ActivitySettings)
    pricing: PricingSettings = Field(default_factory=PricingSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    # OpenTelemetry traces over OTLP/HTTP (the `openfusion[otel]` extra); off without an endpoint.
    tracing: TracingSettings = Field(default_factory=TracingSettings)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from an optional TOML file; keyword overrides (CLI flags) win over the file."""
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {config_file}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {config_file} cannot be read: {exc}") from exc
    data.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return Settings(**data)
    except ValidationError as exc:
        source = f"invalid configuration{f' in {config_file}' if config_file else ''}"
        raise ConfigError(describe(exc, model=Settings, source=source, env_prefix="OPENFUSION_")) from None
    except SettingsError as exc:  # an OPENFUSION_* variable holding a list or table that is not JSON
        raise ConfigError(describe_environment(exc, environ=os.environ, env_prefix="OPENFUSION_")) from None


ENV_PREFIX = "OPENFUSION_"


def misspelt_variables(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """`OPENFUSION_*` variables that set nothing but are one typo away from a setting's: (variable, the setting's).

    pydantic-settings ignores a variable it does not know; `OPENFUSION_DEFUALT_PRESET` would go unnoticed. Only near
    misses are told: other `OPENFUSION_*` variables (`OPENFUSION_CONFIG`, a deployment's own) are no mistake.
    """
    known = _setting_variables(Settings, ENV_PREFIX)
    found = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or any(upper.startswith(f"{k}__") for k in known):
            continue
        # Compared without the prefix all share: OPENFUSION_HOST is no typo of OPENFUSION_HTTP.
        close = difflib.get_close_matches(upper[len(ENV_PREFIX) :], [k[len(ENV_PREFIX) :] for k in known], 1, 0.8)
        if close:
            found.append((variable, ENV_PREFIX + close[0]))
    return found


def _setting_variables(model: type[BaseModel], prefix: str) -> list[str]:
    variables = []
    for name, field in model.model_fields.items():
        variable = f"{prefix}{name.upper()}"
        variables.append(variable)
        if (inner := model_in(field.annotation)) is not None:
            variables += _setting_variables(inner, f"{variable}__")
    return variables
