"""A tool the provider runs and bills apart from tokens, under a daily spend cap: refused before anything is sent.

Native pass-through forwards a Messages or Responses request as sent, so a tool the provider runs itself (Anthropic's
web search and code execution; OpenAI's web search, file search, code interpreter, image generation) reaches it. Each
use is billed per call or per container, which no price here knows and no record counts: a capped key offering one
spent past its cap with every request. A cap needs a bound, so such a request is refused (402 `cost_unbounded`, the
tool named) for a capped key, and goes through as before for a key without a cap.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from fakes.anthropic_api import FakeAnthropic
from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream
from openfusion.app import create_app
from openfusion.settings import ProviderConfig, Settings

CAPPED, FREE = "sk-capped-team-0123456789", "sk-uncapped-team-0123456789"
ENVIRON = {"FAKE_KEY": "sk-provider-secret", "CLAUDE_KEY": "sk-ant-provider", "CAPPED_KEY": CAPPED, "FREE_KEY": FREE}
PRICE = {"prompt": 1e-6, "completion": 1e-6, "max_completion_tokens": 1000}
QUESTION: Any = [{"role": "user", "content": "What happened today?"}]
ANTHROPIC_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
ANTHROPIC_CUSTOM = {"name": "lookup", "description": "Look it up.", "input_schema": {"type": "object"}}


@pytest.fixture
def gateway(
    upstream: FakeUpstream,
    fake_upstream: tuple[FakeUpstream, str],
    anthropic_native: tuple[FakeAnthropic, str],
    tmp_path: Path,
) -> Iterator[str]:
    """Anthropic's API natively (`claude/*`) and OpenAI's Responses API natively (`oai/*`), a capped key and one
    without a cap."""
    providers = [
        ProviderConfig(name="claude", base_url=f"{anthropic_native[1]}/v1", api_key_env="CLAUDE_KEY",
                       models=["claude/*"], strip_prefix=True, messages=True),
        ProviderConfig(name="oai", base_url=f"{fake_upstream[1]}/v1", api_key_env="FAKE_KEY", models=["oai/*"],
                       strip_prefix=True, responses=True),
    ]  # fmt: skip
    settings = Settings(
        providers=providers,
        builtin_providers=False,
        retry={"max_attempts": 1},
        activity={"path": tmp_path / "activity.sqlite3"},
        pricing={"models": {"claude/sonnet": PRICE, "oai/gpt": PRICE}},
        keys=[
            {"name": "capped", "key_env": "CAPPED_KEY", "daily_spend_usd": 5.0},
            {"name": "free", "key_env": "FREE_KEY"},
        ],
    )
    with serve_in_thread(create_app(settings, environ=ENVIRON)) as url:
        yield url


def _messages(url: str, key: str, tools: list[dict[str, Any]]) -> Any:
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    return client.messages.create(model="claude/sonnet", max_tokens=100, messages=QUESTION, tools=tools)  # type: ignore[arg-type]


def _responses(url: str, key: str, tools: list[dict[str, Any]]) -> Any:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    return client.responses.create(model="oai/gpt", input="What happened today?", max_output_tokens=100, tools=tools)  # type: ignore[arg-type]


def test_a_capped_key_offering_anthropics_web_search_is_refused(
    gateway: str, anthropic_native: tuple[FakeAnthropic, str]
) -> None:
    with pytest.raises(anthropic.APIStatusError) as refused:
        _messages(gateway, CAPPED, [ANTHROPIC_CUSTOM, ANTHROPIC_SEARCH])
    assert refused.value.status_code == 402
    assert "the 'web_search_20250305' tool (tools[1])" in refused.value.message
    assert anthropic_native[0].calls == []  # nothing reached the provider


HOSTED = [
    {"type": "web_search"},
    {"type": "code_interpreter", "container": {"type": "auto"}},
    {"type": "image_generation"},
    {"type": "file_search", "vector_store_ids": ["vs_1"]},
]


@pytest.mark.parametrize("tool", HOSTED, ids=[tool["type"] for tool in HOSTED])
def test_a_capped_key_offering_openais_hosted_tools_is_refused(
    gateway: str, upstream: FakeUpstream, tool: dict[str, Any]
) -> None:
    with pytest.raises(openai.APIStatusError) as refused:
        _responses(gateway, CAPPED, [tool])
    assert refused.value.status_code == 402
    assert refused.value.code == "cost_unbounded" and refused.value.param == "tools[0]"
    assert f"the {tool['type']!r} tool (tools[0])" in refused.value.message
    assert upstream.calls == []


def test_tools_billed_by_tokens_alone_stay_open_to_a_capped_key(
    gateway: str, anthropic_native: tuple[FakeAnthropic, str], upstream: FakeUpstream
) -> None:
    assert _messages(gateway, CAPPED, [ANTHROPIC_CUSTOM]).content[0].text == "Native answer."
    function = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}
    assert _responses(gateway, CAPPED, [function]).status == "completed"
    assert [call.body["tools"][0]["name"] for call in anthropic_native[0].calls] == ["lookup"]
    assert [call.body["tools"][0]["name"] for call in upstream.calls] == ["lookup"]


def test_a_key_without_a_cap_still_gets_the_providers_tools(
    gateway: str, anthropic_native: tuple[FakeAnthropic, str], upstream: FakeUpstream
) -> None:
    assert _messages(gateway, FREE, [ANTHROPIC_SEARCH]).content[0].text == "Native answer."
    assert _responses(gateway, FREE, [{"type": "web_search"}]).status == "completed"
    assert anthropic_native[0].calls[0].body["tools"] == [ANTHROPIC_SEARCH]  # forwarded as sent
    assert upstream.calls[0].body["tools"] == [{"type": "web_search"}]
