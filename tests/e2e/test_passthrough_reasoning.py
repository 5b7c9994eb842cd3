"""Pass-through: OpenRouter's `reasoning` object reaches each provider in the style it takes (`reasoning_style`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import openai
import pytest

from e2e.conftest import ask_text
from fakes.upstream import FakeUpstream, Script
from openfusion.settings import ProviderConfig

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def styled_server(
    upstream: FakeUpstream, fake_upstream: tuple[FakeUpstream, str], start_server: Callable[..., Any]
) -> Iterator[str]:
    """The fake upstream as OpenRouter (`router/*`), as an OpenAI-compatible provider that takes `reasoning_effort`
    (`fake/*`, the default style) and as a server that takes no reasoning parameter (`bare/*`)."""
    url = f"{fake_upstream[1]}/v1"
    common: dict[str, Any] = {"base_url": url, "api_key_env": "FAKE_KEY", "strip_prefix": True}
    providers = [
        ProviderConfig(name="router", models=["router/*"], reasoning_style="openrouter", **common),
        ProviderConfig(name="fake", models=["fake/*"], **common),
        ProviderConfig(name="bare", models=["bare/*"], reasoning_style="none", **common),
    ]
    server: AbstractContextManager[str] = start_server(providers=providers)
    with server as base:
        yield base


def _reasoning_fields(body: dict[str, Any]) -> dict[str, Any]:
    return {key: body[key] for key in ("reasoning", "reasoning_effort") if key in body}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("model", "extra", "received"),
    [
        ("router/plain", {"reasoning": {"effort": "high"}}, {"reasoning": {"effort": "high"}}),
        ("router/plain", {"reasoning": {"max_tokens": 2000, "exclude": True}},
         {"reasoning": {"max_tokens": 2000, "exclude": True}}),
        ("router/plain", {"reasoning": {"enabled": True}}, {"reasoning": {"enabled": True}}),
        ("fake/plain", {"reasoning": {"effort": "high"}}, {"reasoning_effort": "high"}),
        ("fake/plain", {"reasoning": {"effort": "low", "exclude": True}}, {"reasoning_effort": "low"}),
        ("fake/plain", {"reasoning": {"effort": "high"}, "reasoning_effort": "low"}, {"reasoning_effort": "low"}),
        ("fake/plain", {"reasoning": {"max_tokens": 2000}}, {"reasoning_effort": "medium"}),
        ("fake/plain", {"reasoning": {"max_tokens": 3500}, "max_completion_tokens": 4000},
         {"reasoning_effort": "high"}),
        ("fake/plain", {"reasoning": {"max_tokens": 2000, "exclude": True}, "max_tokens": 4000},
         {"reasoning_effort": "medium"}),
        ("fake/plain", {"reasoning": {"max_tokens": 500}, "max_completion_tokens": 4000}, {"reasoning_effort": "low"}),
        ("fake/plain", {"reasoning": {"max_tokens": 2000}, "reasoning_effort": "high"}, {"reasoning_effort": "high"}),
        ("fake/plain", {"reasoning": {"exclude": True}}, {}),
        ("fake/plain", {"reasoning": {"enabled": True}}, {"reasoning_effort": "medium"}),
        ("fake/plain", {"reasoning": {"enabled": False}}, {}),
        ("fake/plain", {"reasoning": {"enabled": False, "effort": "high"}}, {}),
        ("fake/plain", {"reasoning": {"enabled": False, "max_tokens": 2000}}, {}),
        ("fake/plain", {"reasoning": {"enabled": False}, "reasoning_effort": "high"}, {}),
        ("router/plain", {"reasoning": {"enabled": False, "effort": "high"}},
         {"reasoning": {"enabled": False, "effort": "high"}}),
        ("bare/plain", {"reasoning": {"effort": "high"}}, {}),
        ("bare/plain", {"reasoning": {"max_tokens": 2000, "exclude": True, "enabled": True}}, {}),
    ],
    ids=["openrouter-effort", "openrouter-budget", "openrouter-enabled", "effort", "effort-excluded",
         "own-reasoning-effort-wins", "budget-no-limit", "budget-high", "budget-medium", "budget-low",
         "own-reasoning-effort-wins-over-budget", "exclude-only", "enabled-only", "disabled-only",
         "disabled-with-effort", "disabled-with-budget", "disabled-over-own-reasoning-effort",
         "openrouter-disabled-with-effort", "none-effort", "none-budget"],
)  # fmt: skip
def test_reasoning_reaches_each_provider_in_its_style(
    upstream: FakeUpstream, styled_server: str, model: str, extra: dict[str, Any], received: dict[str, Any],
    stream: bool,
) -> None:  # fmt: skip
    upstream.script("plain", Script(content="Direct answer."))
    assert ask_text(styled_server, model=model, messages=HI, extra=extra, stream=stream) == "Direct answer."

    sent = upstream.calls_for("plain")[0].body
    assert _reasoning_fields(sent) == received
    assert sent["messages"] == HI  # the rest as sent


def test_each_fallback_gets_reasoning_in_its_own_providers_style(upstream: FakeUpstream, styled_server: str) -> None:
    """Decided per `models` candidate: an OpenAI-compatible provider, then OpenRouter, then one without reasoning,
    then an OpenAI-compatible one again."""
    upstream.script("first", Script(status=400, error_message="Unrecognized request argument supplied: reasoning"))
    upstream.script("second", Script(status=400, error_message="No endpoints found"))
    upstream.script("third", Script(status=404, error_message="model not loaded"))
    upstream.script("fourth", Script(content="From the last fallback."))
    extra = {"reasoning": {"effort": "high", "exclude": True},
             "models": ["router/second", "bare/third", "fake/fourth"]}  # fmt: skip
    with openai.OpenAI(base_url=f"{styled_server}/v1", api_key="k", max_retries=0) as sdk:
        answer = sdk.chat.completions.create(model="fake/first", messages=HI, extra_body=extra)

    assert answer.choices[0].message.content == "From the last fallback."
    assert upstream.calls_for("first")[0].body == {"model": "first", "messages": HI, "reasoning_effort": "high"}
    assert upstream.calls_for("second")[0].body == {"model": "second", "messages": HI,
                                                    "reasoning": {"effort": "high", "exclude": True}}  # fmt: skip
    assert upstream.calls_for("third")[0].body == {"model": "third", "messages": HI}
    assert upstream.calls_for("fourth")[0].body == {"model": "fourth", "messages": HI, "reasoning_effort": "high"}


# A Responses or Messages request for a chat provider goes as a chat completion, its reasoning in the provider's style.
TRANSLATED = {
    "responses": {"input": "Hi", "reasoning": {"effort": "high"}},
    "messages": {"max_tokens": 4000, "messages": HI, "thinking": {"type": "enabled", "budget_tokens": 3000}},
}


@pytest.mark.parametrize("surface", ["responses", "messages"])
def test_a_translated_request_sends_reasoning_in_the_providers_style(
    upstream: FakeUpstream, styled_server: str, surface: str
) -> None:
    for model in ("router/routed", "fake/plain", "bare/bare"):
        upstream.script(model.split("/")[1], Script(content="Answered"))
        body = {**TRANSLATED[surface], "model": model}
        response = httpx.post(f"{styled_server}/v1/{surface}", json=body, headers={"anthropic-version": "2023-06-01"})
        assert response.status_code == 200 and "Answered" in response.text

    assert _reasoning_fields(upstream.calls_for("routed")[0].body) == {"reasoning": {"effort": "high"}}
    assert _reasoning_fields(upstream.calls_for("plain")[0].body) == {"reasoning_effort": "high"}
    assert _reasoning_fields(upstream.calls_for("bare")[0].body) == {}


def test_a_translated_responses_budget_reaches_a_chat_provider_as_an_effort(
    upstream: FakeUpstream, styled_server: str
) -> None:
    """A Responses request's OpenRouter budget, for a chat provider that takes `reasoning_effort`: weighed against
    its `max_output_tokens` (3,500 of 4,000: high)."""
    upstream.script("plain", Script(content="Answered"))
    body = {"model": "fake/plain", "input": "Hi", "max_output_tokens": 4000, "reasoning": {"max_tokens": 3500}}
    response = httpx.post(f"{styled_server}/v1/responses", json=body)
    assert response.status_code == 200 and "Answered" in response.text

    sent = upstream.calls_for("plain")[0].body
    assert _reasoning_fields(sent) == {"reasoning_effort": "high"} and sent["max_completion_tokens"] == 4000


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("reasoning", "param"),
    [
        ("high", "reasoning"),
        (["effort", "high"], "reasoning"),
        ({"effort": "ultra"}, "reasoning.effort"),
        ({"effort": 3}, "reasoning.effort"),
        ({"max_tokens": "2000"}, "reasoning.max_tokens"),
        ({"max_tokens": 0}, "reasoning.max_tokens"),
        ({"exclude": "yes"}, "reasoning.exclude"),
    ],
    ids=["string", "list", "effort-ultra", "effort-number", "budget-string", "budget-zero", "exclude-string"],
)
@pytest.mark.parametrize("model", ["router/plain", "fake/plain", "bare/plain"])
def test_a_malformed_reasoning_is_a_400_in_openais_shape(
    upstream: FakeUpstream, styled_server: str, model: str, reasoning: Any, param: str, stream: bool
) -> None:
    upstream.script("plain", Script(content="Direct answer."))
    sdk = openai.OpenAI(base_url=f"{styled_server}/v1", api_key="k", max_retries=0)
    with sdk, pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(model=model, messages=HI, stream=stream, extra_body={"reasoning": reasoning})

    body = raised.value.response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert f"'{param}'" in error["message"]
    assert upstream.calls_for("plain") == []  # refused here, not by the provider


DISABLED = {"enabled": False, "effort": "high"}


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_turned_off_reaches_no_fusion_call_as_an_effort(
    upstream: FakeUpstream, styled_server: str, stream: bool
) -> None:
    """`enabled: false` wins over the effort beside it for the panel, the judge and the synthesizer alike, whether it
    comes in the request or in the fusion plugin: a provider taking `reasoning_effort` is asked none."""
    for name in ("a", "b", "c", "synth"):
        upstream.script(name, Script(content=f"Answer {name}."))
    for reasoning in ({"reasoning": DISABLED}, {"plugins": [{"id": "fusion", "reasoning": DISABLED}]}):
        answer = ask_text(styled_server, model="fusion/trio", messages=HI, extra=reasoning, stream=stream)
        assert answer == "Answer synth."

    calls = [call for name in ("a", "b", "c", "judge", "synth") for call in upstream.calls_for(name)]
    assert len(calls) == 10  # five calls a fusion, two fusions
    assert [_reasoning_fields(call.body) for call in calls] == [{}] * 10


def test_a_translated_responses_request_with_reasoning_off_sends_no_effort(
    upstream: FakeUpstream, styled_server: str
) -> None:
    """A Responses request's OpenRouter `enabled: false` beside an effort: the chat provider is asked no effort, the
    panel of a fusion neither."""
    upstream.script("plain", Script(content="Answered"))
    for name in ("a", "b", "c", "synth"):
        upstream.script(name, Script(content="Fused"))
    for model in ("fake/plain", "fusion/trio"):
        body = {"model": model, "input": "Hi", "reasoning": {**DISABLED, "summary": "auto"}}
        response = httpx.post(f"{styled_server}/v1/responses", json=body)
        assert response.status_code == 200, response.text

    calls = [call for name in ("plain", "a", "b", "c", "judge", "synth") for call in upstream.calls_for(name)]
    assert len(calls) == 6
    assert [_reasoning_fields(call.body) for call in calls] == [{}] * 6
