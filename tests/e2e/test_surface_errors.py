"""Validation errors name the parameter as the caller's own API does, read through its official SDK.

On /v1/messages Anthropic's way: the path in its dotted notation before the reason (`messages.0.content.1.type:
…`); on /v1/responses OpenAI's: `param` with the Responses name (`input[0].content[1].type`). Both for what the
surface checks itself and for what is found later in the translated chat request (the fusion plan, the guards),
which the client never sent under the chat names (`max_completion_tokens`, `messages[3]`, `tools[0].function`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types import Message

from fakes.upstream import FakeUpstream

Start = Callable[..., AbstractContextManager[str]]
KEY = "sk-any-client-key-0123"
HI = {"role": "user", "content": "Hi"}
BASH = {"type": "bash_20250124", "name": "bash"}


def claude(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0)


def gpt(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


def messages_error(client: anthropic.Anthropic, **request: Any) -> str:
    """The message of the error the anthropic SDK raises for this request (its BadRequestError)."""
    body = {"model": "fake/solo", "max_tokens": 10, "messages": [HI], **request}
    with pytest.raises(anthropic.BadRequestError) as raised:  # the SDK's own request path, any body
        client.post("/v1/messages", body={k: v for k, v in body.items() if v is not None}, cast_to=Message)
    error: Any = raised.value.body
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"] in raised.value.message
    return str(error["error"]["message"])


def responses_error(client: openai.OpenAI, **request: Any) -> openai.BadRequestError:
    """The BadRequestError the openai SDK raises for this Responses request."""
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(**{"model": "fake/solo", "input": "Hi", **request})
    assert raised.value.code == "invalid_request"
    return raised.value


MESSAGES_CASES = [
    ({"max_tokens": None}, "max_tokens: Field required"),
    ({"temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "video"}]}]},
     "messages.0.content.1.type: content blocks of type 'video' are not supported"),
    ({"messages": [HI, {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": 5}]}]},
     "messages.1.content.0.name: Field required"),
    ({"messages": [HI, {"role": "robot", "content": "x"}]},
     "messages.1.role: 'robot' (expected user, assistant or system)"),
    ({"tools": [BASH, {"name": "lookup"}]}, "tools.1.input_schema: Field required"),
    ({"thinking": {"type": "enabled", "budget_tokens": 0}},
     "thinking.budget_tokens: Input should be greater than or equal to 1"),
    # As strict as Anthropic: a number that is a string or a boolean, thinking without a budget or past max_tokens,
    # a tool named twice or of no string type, a tool_choice naming no tool.
    ({"max_tokens": "10"}, "max_tokens: Input should be a valid integer"),
    ({"max_tokens": True}, "max_tokens: Input should be a valid integer"),
    ({"temperature": "NaN"}, "temperature: Input should be a valid number"),
    ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens: Field required"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1000}}, "thinking.budget_tokens: it must be at least 1024"),
    ({"max_tokens": 1024, "thinking": {"type": "enabled", "budget_tokens": 1024}},
     "max_tokens: it must be greater than thinking.budget_tokens (1024)"),
    ({"tools": [{"name": "get", "input_schema": {}}, {"name": "get", "input_schema": {}}]},
     "tools.1.name: tool names must be unique ('get' is there twice)"),
    ({"tools": [{"type": 5, "name": "get", "input_schema": {}}]}, "tools.0.type: expected a string"),
    ({"tools": [{"name": "get", "input_schema": []}]}, "tools.0.input_schema: expected a JSON schema object"),
    ({"tools": [{"name": "get", "input_schema": {}}], "tool_choice": {"type": "tool", "name": "put"}},
     "tool_choice.name: no tool is named 'put'"),
    ({"messages": [{"role": "user", "content": []}]},
     "messages.0.content: all messages must have non-empty content except for the optional final assistant message"),
    # Found in the fusion plan, after translation: the plugin is the client's own.
    ({"model": "fusion/trio", "plugins": [{"id": "fusion", "preset": "nope"}]}, "plugins.0.preset: unknown preset"),
    # The fusion tool is the client's second tool, the chat request's first (Anthropic's bash tool is dropped).
    ({"model": "fake/solo", "tools": [BASH, {"type": "openrouter:fusion", "parameters": {"preset": "nope"}}]},
     "tools.1.parameters.preset: unknown preset"),
]  # fmt: skip


def test_messages_errors_name_anthropics_paths(upstream: FakeUpstream, server: str) -> None:
    with claude(server) as client:
        got = [messages_error(client, **request) for request, _ in MESSAGES_CASES]
    for message, (_, expected) in zip(got, MESSAGES_CASES, strict=True):
        assert message.startswith(expected), message
    assert upstream.calls == []


def test_guards_on_messages_name_max_tokens_not_the_chat_field(upstream: FakeUpstream, start_server: Start) -> None:
    with start_server(guards={"max_tokens": 100}) as url, claude(url) as client:
        message = messages_error(client, max_tokens=1000)
    assert message == "max_tokens: 1000 is over this server's limit of 100"
    assert upstream.calls == []


RESPONSES_CASES = [
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_video"}]}]},
     "input[0].content[1].type"),
    ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
    ({"input": [{"type": "function_call", "call_id": "c1", "name": "f"}, {"type": "function_call_output"}]},
     "input[1].call_id"),
    ({"tools": [{"type": "web_search"}, {"type": "function"}]}, "tools[1].name"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    # An item whose type is not a string (a 500 once: an unhashable type), and input a model cannot read.
    ({"input": [{"type": ["message"], "role": "user", "content": "Hi"}]}, "input[0].type"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": {"a": 1}}]}]}, "input[0].content[0].text"),
    ({"model": "fusion/trio", "extra_body": {"plugins": [{"id": "fusion", "preset": "nope"}]}},
     "plugins[0].preset"),
    ({"tools": [{"type": "web_search"}, {"type": "openrouter:fusion", "parameters": {"preset": "nope"}}]},
     "tools[1].parameters.preset"),
]  # fmt: skip


def test_responses_errors_name_the_responses_param(upstream: FakeUpstream, server: str) -> None:
    with gpt(server) as client:
        errors = [responses_error(client, **request) for request, _ in RESPONSES_CASES]
    for error, (_, param) in zip(errors, RESPONSES_CASES, strict=True):
        assert error.param == param and f"'{param}'" in error.message, error.message
    assert upstream.calls == []


def test_guards_on_responses_name_max_output_tokens_and_input(upstream: FakeUpstream, start_server: Start) -> None:
    with start_server(guards={"max_tokens": 100, "max_messages": 2}) as url, gpt(url) as client:
        tokens = responses_error(client, max_output_tokens=1000)
        messages = responses_error(client, instructions="Be brief.", input=[HI, HI])
    assert tokens.param == "max_output_tokens" and "'max_output_tokens': 1000 is over" in tokens.message
    assert messages.param == "input"
    assert upstream.calls == []
