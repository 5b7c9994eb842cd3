"""Client keys: loaded from the environment or the config file, found by SHA-256 in constant time."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from openfusion.access.config import AccessConfig, Limits
from openfusion.errors import ConfigError
from openfusion.variants import read_variant

log = logging.getLogger("openfusion.access")

# Shorter keys could be guessed: refused at start-up.
MIN_KEY_LENGTH = 16


@dataclass(frozen=True)
class Client:
    """Who is calling: a configured key (by name), or anyone (`name=None`) when no keys are configured."""

    name: str | None
    limits: Limits
    models: tuple[str, ...] = ("*",)
    admin: bool = False  # sees every key's activity
    metrics: bool = False  # reads /metrics

    @property
    def sees_all_activity(self) -> bool:
        """An admin key, or anyone on a server without keys (one tenant); other keys see only their own."""
        return self.admin or self.name is None

    @property
    def reads_metrics(self) -> bool:
        """An admin or metrics key, or anyone on a server without keys: /metrics is the whole server's traffic and
        spend, which no other tenant's key may see."""
        return self.admin or self.metrics or self.name is None

    @property
    def bucket(self) -> str:
        """The name its counters are kept under."""
        return f"key:{self.name}" if self.name is not None else "anonymous"

    def allows(self, slug: str) -> bool:
        """Whether the key's scope covers a model slug: as named, or the model it runs less the suffixes that choose
        among that model's providers or add the web search every scope allows (`:nitro`, `:online`: `variants`)."""
        if self._matches(slug):
            return True
        variant = read_variant(slug)
        return not variant.plain and self._matches(variant.model)

    def _matches(self, slug: str) -> bool:
        return any(fnmatch.fnmatchcase(slug, pattern) for pattern in self.models)


@dataclass(frozen=True)
class _Entry:
    digest: bytes = field(repr=False)
    client: Client


def key_digest(key: str) -> bytes:
    """The SHA-256 of a key, the only form in which keys are kept and compared."""
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyRing:
    """The configured client keys."""

    def __init__(self, entries: list[tuple[bytes, Client]]) -> None:
        self._entries = [_Entry(digest, client) for digest, client in entries]

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def names(self) -> list[str]:
        """The key names, in configuration order."""
        return [entry.client.name or "" for entry in self._entries]

    def find(self, presented: str) -> Client | None:
        """The client whose key this is, or None.

        The presented key is hashed and compared with every stored digest, without stopping at a
        match, so the time taken says nothing about which keys exist or how much of one matched.
        """
        digest = key_digest(presented)
        found: Client | None = None
        for entry in self._entries:
            if hmac.compare_digest(digest, entry.digest) and found is None:
                found = entry.client
        return found


def load_keys(config: AccessConfig, environ: Mapping[str, str]) -> KeyRing:
    """Keys from `OPENFUSION_API_KEYS` (named env-<fingerprint>), `OPENFUSION_ADMIN_KEYS` (admin-<fingerprint>) and
    `[[keys]]`.

    Errors name keys, never values.
    """
    entries: list[tuple[bytes, Client]] = []
    for listed, source, prefix in (
        (config.api_keys, "OPENFUSION_API_KEYS", "env"),
        (config.admin_keys, "OPENFUSION_ADMIN_KEYS", "admin"),
    ):
        raw = listed.get_secret_value() if listed else ""
        values = [value.strip() for value in raw.split(",") if value.strip()]
        for number, value in enumerate(values, start=1):
            _check_length(value, name=f"{prefix} key {number} of {len(values)}", source=source)
            digest = key_digest(value)
            client = Client(name=listed_key_name(prefix, digest), limits=Limits().over(config.limits))
            entries.append((digest, replace(client, admin=True) if prefix == "admin" else client))
    for key in config.keys:
        if key.key_env is not None:
            value = environ.get(key.key_env, "").strip()
            if not value:
                raise ConfigError(f"key {key.name!r}: environment variable {key.key_env} is not set or empty")
            _check_length(value, name=key.name, source=key.key_env)
            digest = key_digest(value)
        else:
            assert key.key_sha256 is not None
            digest = bytes.fromhex(key.key_sha256)
        limits = key.over(config.limits)
        client = Client(name=key.name, limits=limits, models=tuple(key.models), admin=key.admin, metrics=key.metrics)
        entries.append((digest, client))
    _check_unique(entries)
    return KeyRing(entries)


def listed_key_name(prefix: str, digest: bytes) -> str:
    """The name of a key listed in an environment variable: `env-` or `admin-` and the first 12 hex digits of its
    SHA-256. It follows the key, not its place in the list: activity, stored responses, cached results, agent-loop
    turns and limit counters belong to a key by name, so a name by position would hand them to the next key when
    one is removed. The digits say nothing useful about a key of 16 or more random characters."""
    return f"{prefix}-{digest.hex()[:12]}"


def _check_length(value: str, *, name: str, source: str) -> None:
    """Refuse a key short enough to guess (its length is said, never its value)."""
    if len(value) < MIN_KEY_LENGTH:
        raise ConfigError(
            f"key {name!r} ({source}) is {len(value)} characters long; client keys must have at least "
            f"{MIN_KEY_LENGTH} (e.g. python3 -c 'import secrets; print(\"sk-\" + secrets.token_urlsafe(24))')"
        )


def plaintext_keys(config: AccessConfig, environ: Mapping[str, str]) -> list[str]:
    """The client keys whose value is known here (not those stored as a SHA-256), to be masked in upstream text:
    `OPENFUSION_API_KEYS`, `OPENFUSION_ADMIN_KEYS` and each `[[keys]]` entry's `key_env`."""
    values: list[str] = []
    for listed in (config.api_keys, config.admin_keys):
        values += [value.strip() for value in (listed.get_secret_value() if listed else "").split(",")]
    values += [environ.get(key.key_env, "").strip() for key in config.keys if key.key_env is not None]
    return [value for value in values if value]


def _check_unique(entries: list[tuple[bytes, Client]]) -> None:
    names: set[str] = set()
    owners: dict[bytes, str] = {}
    for digest, client in entries:
        name = client.name or ""
        if name in names:
            raise ConfigError(f"key name {name!r} is configured twice")
        names.add(name)
        if digest in owners:
            raise ConfigError(f"keys {owners[digest]!r} and {name!r} are the same key")
        owners[digest] = name


def is_loopback(host: str) -> bool:
    """Whether a listen address only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(host: str, keys: KeyRing, *, allow_open: bool) -> bool:
    """Refuse to listen beyond loopback with no client keys unless allowed; True when it is open beyond loopback.

    Raises ConfigError saying how to set keys or opt in; when opted in, logs a WARNING.
    """
    if keys or is_loopback(host):
        return False
    if not allow_open:
        raise ConfigError(
            f"refusing to listen on {host} with no client keys: anyone who can reach this address could spend "
            "your provider credits. Set client keys: OPENFUSION_API_KEYS=<key>[,<key>...] (random strings of 16 "
            "characters or more, e.g. from `openssl rand -hex 24`, sent by clients as 'Authorization: Bearer "
            "<key>'), or [[keys]] in the config file; or, on a private network or behind something that "
            "authenticates, allow it with OPENFUSION_ALLOW_OPEN=1 (allow_open = true in the config file)."
        )
    log.warning(
        "openfusion is listening on %s with no client keys (OPENFUSION_ALLOW_OPEN): anyone who can reach this "
        "address can spend your provider credits.",
        host,
    )
    return True
