"""Providers as data: the registry that maps a model slug to the endpoint, key and upstream name serving it."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from openfusion.errors import ConfigError, ModelNotFound
from openfusion.settings import ProviderConfig, Settings

# Header names that carry a credential: their values are masked like provider keys.
_CREDENTIAL_HEADER = re.compile(r"key|token|auth|secret|password|signature|credential|cookie|session", re.IGNORECASE)


@dataclass(frozen=True)
class Provider:
    """A provider ready to call: its config and, when it has one, its key (never printed)."""

    config: ProviderConfig
    api_key: SecretStr | None = field(default=None, repr=False)
    builtin: bool = False

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def takes_openrouter_fields(self) -> bool:
        """Whether it reads OpenRouter's own request fields (`provider`, `plugins`...): OpenRouter, or a provider that
        speaks its dialect, which `reasoning_style = "openrouter"` says."""
        return self.config.reasoning_style == "openrouter"

    def serves(self, slug: str) -> bool:
        """Whether any of the provider's `models` patterns matches the slug."""
        return any(fnmatch.fnmatchcase(slug, pattern) for pattern in self.config.models)

    def upstream_model(self, slug: str) -> str:
        """The model name sent upstream: the slug, less its first segment when `strip_prefix` is set."""
        if self.config.strip_prefix and "/" in slug:
            return slug.split("/", 1)[1]
        return slug

    def headers(self, *, key_header: str = "Authorization") -> dict[str, str]:
        """Headers for every call to this provider: its own extras and its key (a bearer token, or in `key_header`)."""
        headers = dict(self.config.headers)
        if self.api_key is not None:
            key = self.api_key.get_secret_value()
            headers[key_header] = f"Bearer {key}" if key_header == "Authorization" else key
        return headers


_MAX_REMEMBERED_ROUTES = 4096


@dataclass(frozen=True)
class Route:
    """Where one model slug goes."""

    slug: str
    provider: Provider
    upstream_model: str


def builtin_provider_configs() -> list[ProviderConfig]:
    """The built-in providers shipped with the package, in precedence order."""
    text = resources.files("openfusion.upstream").joinpath("builtin_providers.toml").read_text("utf-8")
    return [ProviderConfig(**entry) for entry in tomllib.loads(text)["providers"]]


class ProviderRegistry:
    """Configured providers first (file order), then the built-ins whose key is set."""

    def __init__(self, providers: list[Provider], inactive: list[ProviderConfig] | None = None) -> None:
        self.providers = providers
        self._inactive = inactive or []
        self._routes: dict[str, Route] = {}  # every upstream call resolves its slug: remember the answers

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str]) -> ProviderRegistry:
        """Build the registry, reading each provider's key from `environ`."""
        providers: list[Provider] = []
        names: set[str] = set()
        for config in settings.providers:
            if config.name in names:
                raise ConfigError(f"provider name {config.name!r} is configured twice")
            names.add(config.name)
            check_base_url(config)
            providers.append(Provider(config, _key(config, environ)))
        inactive: list[ProviderConfig] = []
        if settings.builtin_providers:
            for config in builtin_provider_configs():
                if config.name in names:
                    continue  # a configured provider of the same name replaces the built-in
                key = _key(config, environ)
                if config.api_key_env is None or key is not None:
                    providers.append(Provider(config, key, builtin=True))
                else:
                    inactive.append(config)
        return cls(providers, inactive)

    def missing_keys(self) -> list[str]:
        """The configured providers whose key variable is not set, as "VAR (provider 'name')"."""
        return [
            f"{p.config.api_key_env} (provider {p.name!r})"
            for p in self.providers
            if not p.builtin and p.config.api_key_env and p.api_key is None
        ]

    def unusable(self) -> str | None:
        """Why no model can be served (None when a provider is usable): none configured, or their keys unset.

        The key-less built-ins (Ollama) are always on, so they alone do not make a configured server.
        """
        if any(p.api_key is not None or (not p.builtin and not p.config.api_key_env) for p in self.providers):
            return None
        missing = self.missing_keys()
        return f"no usable provider: {', '.join(missing)} not set" if missing else "no provider configured"

    def secrets(self) -> list[str]:
        """Every provider key, to be masked wherever an upstream might echo one: from `api_key_env`, and the values of
        the `headers` whose names say they carry a credential (a gateway's `X-Gateway-Key`, Azure's `api-key`,
        `cf-aig-authorization`, ...), their scheme (`Bearer `) left out."""
        keys = [p.api_key.get_secret_value() for p in self.providers if p.api_key is not None]
        for provider in self.providers:
            for name, value in provider.config.headers.items():
                if _CREDENTIAL_HEADER.search(name):
                    scheme, _, credential = value.strip().partition(" ")
                    keys.append(credential.strip() if credential and scheme.isalpha() else value)
        return keys

    def resolve(self, slug: str) -> Route:
        """The route for a slug: the first provider whose patterns match it."""
        route = self._routes.get(slug)
        if route is not None:
            return route
        for provider in self.providers:
            if provider.serves(slug):
                route = Route(slug=slug, provider=provider, upstream_model=provider.upstream_model(slug))
                if len(self._routes) < _MAX_REMEMBERED_ROUTES:  # clients choose slugs: stay bounded
                    self._routes[slug] = route
                return route
        raise ModelNotFound(self._not_served_message(slug), param="model")

    def serves(self, slug: str) -> bool:
        """Whether a provider serves the slug (as far as its patterns say: OpenRouter's `*` serves any)."""
        return any(provider.serves(slug) for provider in self.providers)

    def how_to_serve(self, slug: str) -> str:
        """What would serve a slug no provider serves: a built-in's key variable, else a `[[providers]]` entry."""
        hints = [
            f"set {config.api_key_env} (built-in provider {config.name!r})"
            for config in self._inactive
            if config.api_key_env and any(fnmatch.fnmatchcase(slug, p) for p in config.models)
        ]
        hints.append("add a [[providers]] entry to the config file whose `models` patterns match it")
        return ", or ".join(hints)

    def _not_served_message(self, slug: str) -> str:
        return f"No provider serves model {slug!r}. To serve it, {self.how_to_serve(slug)}."


def check_base_url(config: ProviderConfig) -> None:
    """Refuse (ConfigError, naming the provider) a `base_url` no call could be sent to: its endpoints are made at
    start-up. A host beyond ASCII (an internationalised domain name) is called by its IDNA form (`xn--…`); one that has
    none (a symbol, a character no domain name may hold) is refused here, not with a traceback from the start. The URL
    itself is never repeated: it may carry credentials."""
    try:
        httpx.URL(config.base_url)
    except httpx.InvalidURL as exc:
        host = _host(config.base_url)
        if host is not None and not host.isascii():
            raise ConfigError(
                f"provider {config.name!r}: the host of base_url, {host!r}, is not a valid internationalised domain "
                "name (IDNA 2008); write it as a valid one or in its ASCII form (xn--...)"
            ) from None
        raise ConfigError(f"provider {config.name!r}: base_url is not a valid URL: {exc}") from None


def _host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _key(config: ProviderConfig, environ: Mapping[str, str]) -> SecretStr | None:
    if not config.api_key_env:
        return None
    value = environ.get(config.api_key_env, "").strip()
    return SecretStr(value) if value else None
