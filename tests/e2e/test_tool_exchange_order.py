"""Tool exchanges that other dialects allow in another order reach a chat model in OpenAI's order.

A fusion request's conversation is checked against OpenAI's rule (the tool messages answering an assistant message's
calls right after it, before any other message): a Messages or Responses conversation its own API takes must pass
that check and reach the synthesizer, a chat model, in that order.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai

from fakes.upstream import FakeUpstream, Script

HI = {"role": "user", "content": "Weather in Oslo?"}
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "22 C"}
CALL = {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
TOOL = {"role": "tool", "tool_call_id": "toolu_1", "content": "22 C"}


def synthesized_from(upstream: FakeUpstream) -> list[dict[str, Any]]:
    """The conversation the synthesizer got, without its system prompt."""
    [call] = upstream.calls_for("synth")
    return [m for m in call.body["messages"] if m["role"] != "system"]


def ask_messages(url: str, messages: list[dict[str, Any]]) -> None:
    with anthropic.Anthropic(base_url=url, api_key="k", max_retries=0) as claude:
        claude.messages.create(model="fusion/trio", max_tokens=500, messages=messages)  # type: ignore[arg-type]


def test_a_call_in_the_first_of_two_assistant_messages_reaches_the_synthesizer_as_one_turn(
    upstream: FakeUpstream, server: str
) -> None:
    """Anthropic joins consecutive assistant messages into one turn, answered by the user turn after the second: one
    assistant message with the call, then its tool message (not a 400, nor an order a chat model refuses)."""
    upstream.script("synth", Script(content="22 C."))

    calling, checking = {"role": "assistant", "content": [TOOL_USE]}, {"role": "assistant", "content": "Checking."}
    ask_messages(server, [HI, calling, checking, {"role": "user", "content": [RESULT]}])

    assert synthesized_from(upstream)[:3] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [CALL]},
        TOOL,
    ]


def test_a_system_turn_between_a_call_and_its_result_comes_after_the_result(
    upstream: FakeUpstream, server: str
) -> None:
    """Claude Code sends system turns inside `messages`: one between a call and its result is no other turn to
    Anthropic; to a chat model it would part them."""
    upstream.script("synth", Script(content="22 C."))

    calling, system = {"role": "assistant", "content": [TOOL_USE]}, {"role": "system", "content": "Be brief."}
    ask_messages(server, [HI, calling, system, {"role": "user", "content": [RESULT]}])

    conversation = upstream.calls_for("synth")[0].body["messages"]
    roles = [m["role"] for m in conversation]
    at = roles.index("tool")
    assert conversation[at - 1]["tool_calls"] == [CALL] and conversation[at] == TOOL
    assert {"role": "system", "content": "Be brief."} in conversation[at + 1 :]


def test_a_responses_message_between_a_call_and_its_output_comes_with_the_call(
    upstream: FakeUpstream, server: str
) -> None:
    upstream.script("synth", Script(content="22 C."))
    items = [
        {"type": "message", "role": "user", "content": "Weather in Oslo?"},
        {"type": "function_call", "call_id": "toolu_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"type": "message", "role": "assistant", "content": "Checking."},
        {"type": "function_call_output", "call_id": "toolu_1", "output": "22 C"},
    ]

    with openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as sdk:
        sdk.responses.create(model="fusion/trio", input=items)  # type: ignore[arg-type]

    assert synthesized_from(upstream)[:3] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [CALL]},
        TOOL,
    ]
