"""The `[research]` configuration: defaults, validation, and the TOML shape operators write."""

from __future__ import annotations

import ipaddress
import tomllib

import pytest
from pydantic import ValidationError

from openfusion.upstream.web.config import FetchConfig, ResearchConfig, SearchConfig

TOML = """
[research.search]
backend = "searxng"
base_url = "http://127.0.0.1:8888"
max_results = 8

[research.fetch]
max_bytes = 1048576
max_chars = 12000
timeout_s = 10
allow_private = ["10.20.0.0/16", "fd00:1::/64"]
allow_hosts = ["Wiki.Corp.Example.", "*.lab.example", "bücher.example"]
"""


def test_defaults_offer_fetch_but_no_search() -> None:
    config = ResearchConfig()
    assert not config.search_available
    assert config.fetch.enabled
    assert (config.fetch.max_bytes, config.fetch.max_chars, config.fetch.max_redirects) == (2 * 1024 * 1024, 20_000, 5)
    assert config.fetch.allow_private == [] and config.fetch.allow_hosts == []


def test_the_operator_toml_table_parses() -> None:
    config = ResearchConfig.model_validate(tomllib.loads(TOML)["research"])
    assert config.search_available and config.search is not None
    assert (config.search.backend, config.search.max_results, config.search.key_env) == ("searxng", 8, None)
    assert not config.search.needs_key
    assert config.fetch.allow_private == [ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("fd00:1::/64")]
    assert config.fetch.allow_hosts == ["wiki.corp.example", "*.lab.example", "xn--bcher-kva.example"]


def test_keyed_backends_name_their_usual_variable_unless_told_otherwise() -> None:
    assert SearchConfig(backend="brave").key_env == "BRAVE_API_KEY"
    assert SearchConfig(backend="tavily").key_env == "TAVILY_API_KEY"
    assert SearchConfig(backend="exa").key_env == "EXA_API_KEY"
    assert SearchConfig(backend="exa", api_key_env="WORK_EXA_KEY").key_env == "WORK_EXA_KEY"
    assert SearchConfig(backend="brave").needs_key


def test_a_loose_cidr_means_its_network() -> None:
    assert FetchConfig(allow_private=["10.1.2.3/8"]).allow_private == [ipaddress.ip_network("10.0.0.0/8")]


@pytest.mark.parametrize(
    "table",
    [
        {"search": {"backend": "searxng"}},  # SearXNG needs its URL
        {"search": {"backend": "google"}},
        {"search": {"backend": "brave", "max_results": 26}},
        {"search": {"backend": "brave", "max_results": 0}},
        {"search": {"backend": "brave", "base_url": "ftp://x"}},
        {"search": {"backend": "brave", "api_key": "sk-inline"}},  # keys come from the environment only
        {"fetch": {"allow_private": ["not-a-network"]}},
        {"fetch": {"allow_hosts": ["http://wiki.corp/"]}},
        {"fetch": {"max_bytes": 10}},
        {"fetch": {"max_redirects": 11}},
        {"fetch": {"timeout_s": 0}},
        {"unknown": 1},
    ],
)
def test_invalid_tables_are_rejected(table: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ResearchConfig.model_validate(table)
