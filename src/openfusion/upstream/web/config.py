"""Operator configuration of web research: the `[research]` table (search backend, fetch limits, allow-lists)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from openfusion.upstream.web.addresses import IPNetwork, connect_address

SearchBackendName = Literal["searxng", "brave", "tavily", "exa"]

# The environment variable each keyed backend reads its key from unless `api_key_env` names another.
DEFAULT_KEY_ENV: dict[str, str] = {"brave": "BRAVE_API_KEY", "tavily": "TAVILY_API_KEY", "exa": "EXA_API_KEY"}

DEFAULT_USER_AGENT = "Mozilla/5.0 (compatible; openfusion-fetch/0.1)"


class SearchConfig(BaseModel):
    """`[research.search]`: which search backend answers `web_search`, and how."""

    model_config = ConfigDict(extra="forbid")

    backend: SearchBackendName
    # Required for SearXNG (your instance, with the JSON format enabled); an optional override for the others.
    base_url: str | None = Field(default=None, min_length=1)
    # Where the caller reads the key from; the backend's usual variable when unset (SearXNG needs none).
    api_key_env: str | None = Field(default=None, min_length=1)
    max_results: int = Field(default=5, ge=1, le=25)
    timeout_s: float = Field(default=15.0, gt=0, le=120)
    # USD per search request, for cost and spend caps; unset: the backend's public list price (SearXNG: free).
    price_usd: float | None = Field(default=None, ge=0, le=10)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(("http://", "https://")):
            raise ValueError("base_url must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _searxng_needs_url(self) -> SearchConfig:
        if self.backend == "searxng" and self.base_url is None:
            raise ValueError("the searxng backend needs base_url (your SearXNG instance)")
        return self

    @property
    def key_env(self) -> str | None:
        """The environment variable holding this backend's API key, if it uses one."""
        return self.api_key_env or DEFAULT_KEY_ENV.get(self.backend)

    @property
    def needs_key(self) -> bool:
        """Whether the backend cannot work without an API key."""
        return self.backend in DEFAULT_KEY_ENV


class FetchConfig(BaseModel):
    """`[research.fetch]`: limits of `web_fetch` and the operator's explicit intranet allow-list."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_chars: int = Field(default=20_000, ge=200, le=1_000_000)
    timeout_s: float = Field(default=20.0, gt=0, le=300)
    max_redirects: int = Field(default=5, ge=0, le=10)
    # Non-public ranges (e.g. "10.20.0.0/16") fetch may reach anyway; unspecified, multicast and broadcast never.
    allow_private: list[IPNetwork] = Field(default_factory=list)
    # Host names ("wiki.corp.example", "*.corp.example") whose addresses are not range-checked.
    allow_hosts: list[str] = Field(default_factory=list)
    user_agent: str = Field(default=DEFAULT_USER_AGENT, min_length=1)
    # Ports of public addresses fetch may connect to (targets let through by the allow-lists keep any port).
    allow_ports: list[int] = Field(default_factory=lambda: [80, 443], min_length=1)
    # Wall time one HTML or PDF text extraction may take; its worker process is killed past it (and when its
    # request is cancelled). The worker's RLIMIT_CPU is this plus a second.
    extract_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # Address space of an extraction worker process (RLIMIT_AS), in MiB.
    extract_memory_mb: int = Field(default=1024, ge=256, le=65536)
    # Pages of a PDF whose text is read; the rest is left out with a truncation marker.
    max_pdf_pages: int = Field(default=50, ge=1, le=10_000)
    # Extraction worker processes (started on the first extraction); more extractions wait for one.
    extract_workers: int = Field(default=2, ge=1, le=32)
    # Fetches one request (one fusion run: its panel and judge together) may have under way at once; more wait
    # for a turn, within their timeout_s. The worker's fetch client has 64 connections for every request.
    max_fetches_per_request: int = Field(default=16, ge=1, le=64)
    # Fetches one client key (all its requests together; no key at all counts as one) may have under way at once
    # in a worker; more wait for a turn, within their timeout_s. Half the client's 64 connections by default, so
    # one key's requests cannot take the connections every other key's research needs.
    max_fetches_per_key: int = Field(default=32, ge=1, le=64)

    @field_validator("allow_private", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if isinstance(value, list):
            # strict=False: "10.1.2.3/8" means 10.0.0.0/8, as an operator would expect.
            return [ipaddress.ip_network(item, strict=False) if isinstance(item, str) else item for item in value]
        return value

    @field_validator("allow_ports")
    @classmethod
    def _ports(cls, value: list[int]) -> list[int]:
        if any(not 0 < port < 65536 for port in value):
            raise ValueError("ports are 1-65535")
        return sorted(set(value))

    @field_validator("allow_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return [normalize_host_pattern(item) for item in value]


class ResearchConfig(BaseModel):
    """`[research]`: web research offered to panelists. No `search` table means no `web_search` tool."""

    model_config = ConfigDict(extra="forbid")

    search: SearchConfig | None = None
    fetch: FetchConfig = Field(default_factory=FetchConfig)

    @property
    def search_available(self) -> bool:
        """Whether a search backend is configured (the caller must still find its key)."""
        return self.search is not None


def normalize_host_pattern(pattern: str) -> str:
    """An allow-list host in the form URLs are compared in: lower case, IDNA, no trailing dot; an address as the
    one reached (`::ffff:10.1.2.3` is `10.1.2.3`)."""
    text = pattern.strip().lower().rstrip(".")
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    try:
        return str(connect_address(ipaddress.ip_address(name.strip("[]"))))
    except ValueError:
        pass
    if not name or any(char in name for char in "/:@%* "):
        raise ValueError(f"not a host name: {pattern!r}")
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"not a host name: {pattern!r}") from exc
    return "*." + name if wildcard else name
