"""A second fusion plugin under a scoped key: refused, never forwarded to the provider with its models.

Only the first fusion plugin is read (its preset and models checked against the key's scope) and taken out of a
pass-through body; a second one went on to the provider as sent, where one that runs fusion itself (OpenRouter)
would have called the models it names, outside the key's scope and the spend cap's estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import anthropic
import openai
import pytest
from fastapi import FastAPI

from fakes.upstream import FakeUpstream, Script

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]
KEY = "sk-outer-only-0123456789"
# The caller's own model, nothing else: no preset, no other model.
SCOPED = {"keys": [{"name": "outer-only", "key_env": "OUTER_KEY", "models": ["fake/outer"]}]}
ENVIRON = {"OUTER_KEY": KEY}
# The first turns fusion off (a plain pass-through); the second names models the key may not use.
PLUGINS = [
    {"id": "fusion", "enabled": False},
    {"id": "fusion", "analysis_models": ["fake/secret-a", "fake/secret-b"], "model": "fake/secret-judge"},
]


def _chat(url: str) -> Any:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    messages: Any = [{"role": "user", "content": "Hi"}]
    return client.chat.completions.create(model="fake/outer", messages=messages, extra_body={"plugins": PLUGINS})


def _responses(url: str) -> Any:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    return client.responses.create(model="fake/outer", input="Hi", extra_body={"plugins": PLUGINS})


def _messages(url: str) -> Any:
    client = anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0)
    messages: Any = [{"role": "user", "content": "Hi"}]
    return client.messages.create(
        model="fake/outer", max_tokens=100, messages=messages, extra_body={"plugins": PLUGINS}
    )


@pytest.mark.parametrize("send", [_chat, _responses, _messages], ids=["chat", "responses", "messages"])
def test_a_second_fusion_plugin_is_refused_not_forwarded(
    upstream: FakeUpstream, serve: Serve, send: Callable[[str], Any]
) -> None:
    upstream.script("outer", Script(content="Hello."))
    with (
        serve(SCOPED, environ=ENVIRON) as (url, _),
        pytest.raises((openai.BadRequestError, anthropic.BadRequestError)) as refused,
    ):
        send(url)
    assert "only one fusion plugin" in refused.value.message
    if isinstance(refused.value, openai.BadRequestError):
        assert refused.value.param == "plugins[1]"
    else:  # Anthropic's errors have no param: the message names it in its dialect
        assert "plugins.1: only one" in refused.value.message
    assert upstream.calls == []  # nothing reached the provider, the second plugin least of all


def test_one_fusion_plugin_turned_off_is_still_a_pass_through(upstream: FakeUpstream, serve: Serve) -> None:
    upstream.script("outer", Script(content="Hello."))
    with serve(SCOPED, environ=ENVIRON) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        answer = client.chat.completions.create(
            model="fake/outer", messages=[{"role": "user", "content": "Hi"}], extra_body={"plugins": PLUGINS[:1]}
        )
    assert answer.choices[0].message.content == "Hello."
    assert [call.model for call in upstream.calls] == ["outer"]
    assert "plugins" not in upstream.calls[0].body  # openfusion's own plugin never reaches the provider
