"""What a pass-through would let the provider choose, under a scoped or capped key: refused before anything is sent.

A pass-through to OpenRouter forwards the client's fields as sent (no other provider gets OpenRouter's own fields:
tests/e2e/test_passthrough.py). OpenRouter reads some of them as choices of its own: a `preset`
(the operator's account's, naming any model), a plugin (an auto router picks models; `web` is billed per result), and
a fusion plugin spelt other than `"fusion"` (openfusion's reading) that OpenRouter may take for its own and run a
panel of the models it names. A key's scope and spend cap must hold for what the provider runs; a key with every
model in scope and no cap still gets them forwarded as sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from fastapi import FastAPI

from access.conftest import fake_prices
from fakes.anthropic_api import FakeAnthropic
from fakes.upstream import FakeUpstream, Script
from openfusion.settings import ProviderConfig

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]
SCOPED, CAPPED, FREE = "sk-outer-only-0123456789", "sk-capped-team-0123456789", "sk-everything-0123456789"
PATTERN = "sk-fake-anything-0123456789"
ENVIRON = {"SCOPED_KEY": SCOPED, "CAPPED_KEY": CAPPED, "FREE_KEY": FREE, "PATTERN_KEY": PATTERN}
KEYS = {
    "keys": [
        {"name": "outer-only", "key_env": "SCOPED_KEY", "models": ["fake/outer", "native/gpt", "claude/sonnet"]},
        {"name": "capped", "key_env": "CAPPED_KEY", "daily_spend_usd": 5.0},
        {"name": "everything", "key_env": "FREE_KEY"},
        {"name": "fake-anything", "key_env": "PATTERN_KEY", "models": ["fake/*"]},
    ]
}
HI: Any = [{"role": "user", "content": "Hi"}]
OUTER_FUSION = {"id": "Fusion", "analysis_models": ["fake/secret-a", "fake/secret-b"], "model": "fake/secret-judge"}


@pytest.fixture
def gateway(
    upstream: FakeUpstream,
    serve: Serve,
    core_settings: dict[str, Any],
    fake_upstream: tuple[FakeUpstream, str],
    anthropic_native: tuple[FakeAnthropic, str],
    tmp_path: Path,
) -> Iterator[str]:
    """The fake upstream as OpenRouter's chat endpoint (`fake/*`) and its Responses one (`native/*`), a fake Anthropic
    (`claude/*`, Messages-native); a key scoped to three plain models, a capped key, and a key with neither."""
    upstream.script("outer", Script(content="Hello."))
    # OpenRouter (`reasoning_style = "openrouter"`): the provider that reads these choices, and the only one sent them.
    chat = core_settings["providers"][0].model_copy(update={"reasoning_style": "openrouter"})
    # OpenRouter's Responses endpoint (`reasoning_style = "openrouter"`): the provider that reads these choices.
    native = ProviderConfig(name="native", base_url=f"{fake_upstream[1]}/v1", api_key_env="FAKE_KEY",
                            models=["native/*"], strip_prefix=True, responses=True,
                            reasoning_style="openrouter")  # fmt: skip
    messages_native = ProviderConfig(name="claude", base_url=f"{anthropic_native[1]}/v1", api_key_env="FAKE_KEY",
                                      models=["claude/*"], strip_prefix=True, messages=True)  # fmt: skip
    pricing = fake_prices()
    pricing["models"]["native/gpt"] = pricing["models"]["claude/sonnet"] = pricing["models"]["fake/outer"]
    with serve(
        KEYS,
        environ=ENVIRON,
        providers=[chat, native, messages_native],
        activity={"path": tmp_path / "activity.sqlite3"},
        pricing=pricing,
    ) as (url, _):
        yield url


def _chat(url: str, key: str, **extra: Any) -> Any:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    return client.chat.completions.create(model="fake/outer", messages=HI, max_tokens=100, extra_body=extra)


def _native(url: str, key: str, **extra: Any) -> Any:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    return client.responses.create(model="native/gpt", input="Hi", max_output_tokens=100, extra_body=extra)


@pytest.mark.parametrize("send", [_chat, _native], ids=["chat", "native-responses"])
def test_a_scoped_key_may_not_send_the_providers_preset(gateway: str, upstream: FakeUpstream, send: Any) -> None:
    with pytest.raises(openai.PermissionDeniedError) as refused:
        send(gateway, SCOPED, preset="operators-anything")
    assert refused.value.code == "model_not_allowed" and refused.value.param == "preset"
    assert upstream.calls == []  # nothing reached the provider, the preset least of all


@pytest.mark.parametrize("send", [_chat, _native], ids=["chat", "native-responses"])
def test_a_fusion_plugin_spelt_otherwise_is_refused_under_a_scope(
    gateway: str, upstream: FakeUpstream, send: Any
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        send(gateway, SCOPED, plugins=[{"id": "fusion", "enabled": False}, OUTER_FUSION])
    assert refused.value.param == "plugins[1].id"
    assert 'spelt "fusion"' in refused.value.message
    assert upstream.calls == []


def test_a_fusion_plugin_spelt_otherwise_is_refused_in_anthropics_dialect(gateway: str, upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=gateway, api_key=SCOPED, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model="fake/outer", max_tokens=100, messages=HI, extra_body={"plugins": [OUTER_FUSION]})
    assert "plugins.0.id: the fusion plugin is spelt" in refused.value.message
    assert upstream.calls == []


# Fusion's server tool spelt other than openfusion reads it: not tool mode here, so a pass-through would forward it.
OUTER_FUSION_TOOL = {"type": "OpenRouter:Fusion", "parameters": {"analysis_models": ["fake/secret-a"]}}


def _native_messages(url: str, key: str, **extra: Any) -> Any:
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    return client.messages.create(model="claude/sonnet", max_tokens=100, messages=HI, extra_body=extra)


@pytest.mark.parametrize("key", [SCOPED, CAPPED], ids=["scoped", "capped"])
@pytest.mark.parametrize("send", [_chat, _native], ids=["chat", "native-responses"])
def test_a_fusion_tool_spelt_otherwise_is_refused(gateway: str, upstream: FakeUpstream, send: Any, key: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        send(gateway, key, tools=[{"type": "function", "function": {"name": "f"}, "name": "f"}, OUTER_FUSION_TOOL])
    assert refused.value.param == "tools[1].type"
    assert "'openrouter:fusion'" in refused.value.message
    assert upstream.calls == []


@pytest.mark.parametrize("key", [SCOPED, CAPPED], ids=["scoped", "capped"])
def test_a_fusion_tool_spelt_otherwise_is_refused_on_native_messages(
    gateway: str, anthropic_native: tuple[FakeAnthropic, str], key: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        _native_messages(gateway, key, tools=[OUTER_FUSION_TOOL])
    assert "tools.0.type" in refused.value.message
    assert anthropic_native[0].calls == []


def test_a_fusion_tool_spelt_otherwise_goes_as_sent_for_a_key_without_scope_or_cap(
    gateway: str, upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str]
) -> None:
    assert _chat(gateway, FREE, tools=[OUTER_FUSION_TOOL]).choices[0].message.content == "Hello."
    assert upstream.calls[0].body["tools"] == [OUTER_FUSION_TOOL]
    _native_messages(gateway, FREE, tools=[OUTER_FUSION_TOOL])
    assert anthropic_native[0].calls[0].body["tools"] == [OUTER_FUSION_TOOL]


def test_a_scoped_key_may_not_send_a_plugin_that_may_choose_models(gateway: str, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.PermissionDeniedError) as refused:
        _chat(gateway, SCOPED, plugins=[{"id": "auto-router", "allowed_models": ["fake/secret-*"]}])
    assert refused.value.code == "model_not_allowed" and refused.value.param == "plugins[0]"
    assert upstream.calls == []


def test_a_scoped_key_keeps_the_plugins_that_call_no_other_model(gateway: str, upstream: FakeUpstream) -> None:
    assert _chat(gateway, SCOPED, plugins=[{"id": "web", "max_results": 3}]).choices[0].message.content == "Hello."
    assert upstream.calls[0].body["plugins"] == [{"id": "web", "max_results": 3}]  # forwarded as sent


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"plugins": [{"id": "web"}]}, "plugins[0]"), ({"preset": "operators-anything"}, "preset")],
    ids=["web-plugin", "preset"],
)
@pytest.mark.parametrize("send", [_chat, _native], ids=["chat", "native-responses"])
def test_a_capped_key_may_not_send_what_the_provider_prices(
    gateway: str, upstream: FakeUpstream, send: Any, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.APIStatusError) as refused:
        send(gateway, CAPPED, **extra)
    assert refused.value.status_code == 402
    assert refused.value.code == "cost_unbounded" and refused.value.param == param
    assert upstream.calls == []


def test_a_key_without_scope_or_cap_still_gets_them_forwarded(gateway: str, upstream: FakeUpstream) -> None:
    plugins = [{"id": "web"}, OUTER_FUSION]
    assert _chat(gateway, FREE, preset="mine", plugins=plugins).choices[0].message.content == "Hello."
    assert _native(gateway, FREE, preset="mine", plugins=plugins).status == "completed"
    for call in upstream.calls:
        assert call.body["preset"] == "mine" and call.body["plugins"] == plugins  # a pass-through, as before
    assert len(upstream.calls) == 2


@pytest.mark.parametrize(("key", "status"), [(SCOPED, 403), (CAPPED, 402)], ids=["scoped", "capped"])
def test_a_native_messages_request_may_not_carry_the_providers_preset(
    gateway: str, anthropic_native: tuple[FakeAnthropic, str], key: str, status: int
) -> None:
    """A `preset` is judged on the Messages surface too (OpenRouter's Messages endpoint would run it); Anthropic
    itself never gets one, OpenRouter's field."""
    client = anthropic.Anthropic(base_url=gateway, api_key=key, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as refused:
        client.messages.create(model="claude/sonnet", max_tokens=100, messages=HI, extra_body={"preset": "anything"})
    assert refused.value.status_code == status and "preset" in refused.value.message
    assert anthropic_native[0].calls == []
    free = anthropic.Anthropic(base_url=gateway, api_key=FREE, max_retries=0)
    free.messages.create(model="claude/sonnet", max_tokens=100, messages=HI, extra_body={"preset": "mine"})
    assert len(anthropic_native[0].calls) == 1 and "preset" not in anthropic_native[0].calls[0].body


@pytest.mark.parametrize(
    ("model", "fallbacks", "param"),
    [("fake/outer@preset/anything", None, "model"), ("fake/outer", ["fake/outer@preset/anything"], "models[0]")],
    ids=["model", "fallback"],
)
def test_a_preset_named_in_the_slug_is_refused_under_a_scope_its_pattern_would_match(
    gateway: str, upstream: FakeUpstream, model: str, fallbacks: list[str] | None, param: str
) -> None:
    """OpenRouter reads `vendor/model@preset/x` as the preset's request: `fake/*` matches the slug, not what it runs."""
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=PATTERN, max_retries=0)
    extra = {"models": fallbacks} if fallbacks else None
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model=model, messages=HI, max_tokens=100, extra_body=extra)
    assert refused.value.code == "model_not_allowed" and refused.value.param == param
    assert upstream.calls == []
