"""The access configuration: `[[keys]]`, `[limits]`, `[guards]`, `[cors]`, the key variables and `REDIS_URL`."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

# Key names end up in logs, Redis keys and the activity store: keep them plain.
KEY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Limits(BaseModel):
    """Per-client limits; a field left unset means no limit (or, on a key, the `[limits]` default)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=1)
    max_concurrent_fusion: int | None = Field(default=None, ge=1)
    # Model-calling requests in flight, fusion and pass-through, on every surface: one key cannot hold the upstream
    # connections every key shares (a fusion run holds a slot of both limits).
    max_concurrent_requests: int | None = Field(default=None, ge=1)
    daily_spend_usd: float | None = Field(default=None, gt=0)

    def over(self, defaults: Limits) -> Limits:
        """These limits, each unset one taken from `defaults`."""
        return Limits(
            **{
                name: getattr(self, name) if getattr(self, name) is not None else getattr(defaults, name)
                for name in Limits.model_fields
            }
        )


class LimitsConfig(Limits):
    """`[limits]`: every key's defaults, or one budget shared by all clients when no keys are configured."""

    # Namespace of the counters in Redis (several deployments may share one Redis): their keys start `{<prefix>}:`.
    redis_prefix: str = Field(default="openfusion", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    # Wrong keys one client address may present within `auth_failure_window_s` before it is refused (429
    # `auth_failures`) for `auth_block_s`; counted in Redis when it is configured, else in each process. 0 turns the
    # brake off.
    auth_failures: int = Field(default=10, ge=0)
    # The window the wrong keys of `auth_failures` are counted in.
    auth_failure_window_s: float = Field(default=60.0, gt=0)
    # How long an address that presented too many wrong keys is refused, whatever key it sends.
    auth_block_s: float = Field(default=300.0, gt=0)


class KeyConfig(Limits):
    """One `[[keys]]` entry: a named client key, read from the environment or stored as its SHA-256."""

    name: str = Field(pattern=KEY_NAME_PATTERN)
    key_env: str | None = Field(default=None, min_length=1)
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    # fnmatch patterns over the requested model slug (fusion presets as `fusion/<name>`).
    models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    # An admin key sees every key's activity; any other key sees only its own.
    admin: bool = False
    # May read /metrics (the whole server's traffic and spend); an admin key always may.
    metrics: bool = False

    @field_validator("key_sha256")
    @classmethod
    def _lowercase(cls, value: str | None) -> str | None:
        return value.lower() if value else value

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.key_env is None) == (self.key_sha256 is None):
            raise ValueError(f"key {self.name!r} needs exactly one of key_env or key_sha256")
        return self


class GuardsConfig(BaseModel):
    """`[guards]`: request shapes refused with 400 before anything is sent upstream."""

    model_config = ConfigDict(extra="forbid")

    max_messages: int | None = Field(default=None, ge=1)
    max_panel_size: int = Field(default=8, ge=1, le=8)
    max_tokens: int | None = Field(default=None, ge=1)


class CorsConfig(BaseModel):
    """`[cors]`: off unless `allow_origins` names at least one origin (or `"*"`)."""

    model_config = ConfigDict(extra="forbid")

    allow_origins: list[str] = Field(default_factory=list)
    # Browser SDKs send headers of their own (x-stainless-*), so every request header is allowed by default.
    allow_headers: list[str] = Field(default_factory=lambda: ["*"])
    max_age: int = Field(default=600, ge=0)


class AccessConfig(BaseModel):
    """Everything access control is configured with (the matching fields of Settings)."""

    model_config = ConfigDict(extra="ignore")

    api_keys: SecretStr | None = None
    admin_keys: SecretStr | None = None  # OPENFUSION_ADMIN_KEYS: like api_keys (named admin-<fingerprint>), and admin
    keys: list[KeyConfig] = Field(default_factory=list)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    guards: GuardsConfig = Field(default_factory=GuardsConfig)
    cors: CorsConfig = Field(default_factory=CorsConfig)
    # Shared counters for several replicas; unset: `REDIS_URL` from the environment, else in-process.
    redis_url: SecretStr | None = None
    # The secret keying the fingerprints of wrong keys in the log; unset: made afresh by each server.
    fingerprint_key: SecretStr | None = None


def redis_url(config: AccessConfig, environ: Mapping[str, str]) -> str:
    """The Redis URL of the shared limit counters: `redis_url`, else `REDIS_URL` from `environ`; "" for none."""
    return config.redis_url.get_secret_value() if config.redis_url else environ.get("REDIS_URL", "").strip()


def configured_limits(config: AccessConfig) -> list[str]:
    """Every per-client limit set, named where it is set (`[limits] requests_per_minute`, `key 'team' ...`)."""
    found = [f"[limits] {name}" for name in Limits.model_fields if getattr(config.limits, name) is not None]
    for key in config.keys:
        found += [f"key {key.name!r} {name}" for name in Limits.model_fields if getattr(key, name) is not None]
    return found


# The shortest fingerprint key taken: a short one could be found by trying, and with it the fingerprints matched
# against a list of likely keys.
MIN_FINGERPRINT_KEY_CHARS = 16


def check_fingerprint_key(value: SecretStr | None) -> SecretStr | None:
    """A fingerprint key long enough to stay secret (the message never shows it); an empty one is none (`${VAR:-}`)."""
    if value is None or not value.get_secret_value().strip():
        return None
    if len(value.get_secret_value().strip()) < MIN_FINGERPRINT_KEY_CHARS:
        raise ValueError(f"the fingerprint key must have at least {MIN_FINGERPRINT_KEY_CHARS} characters")
    return value


def fingerprint_key(config: AccessConfig) -> bytes | None:
    """The BLAKE2b key of wrong keys' fingerprints, derived from `fingerprint_key`; None: one made in the process."""
    if config.fingerprint_key is None:
        return None
    secret = config.fingerprint_key.get_secret_value().strip().encode("utf-8")
    return hashlib.blake2b(secret, digest_size=32, person=b"of-fingerprint").digest()
