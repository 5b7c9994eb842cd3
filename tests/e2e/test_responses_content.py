"""Responses content a chat provider gets in its own form: images in system, developer and assistant messages, and
a `function_call_output` made of content parts, through the real server and the official SDK (nothing dropped)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from fakes.upstream import FakeUpstream, Script

PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="  # noqa: E501
PDF = "data:application/pdf;base64,JVBERi0xLjQK"
IMAGE = {"type": "input_image", "image_url": PNG, "detail": "low"}
CHAT_IMAGE = {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}}
CALL = {"type": "function_call", "call_id": "call_s1", "name": "screenshot", "arguments": "{}"}
TOOL = {"type": "function", "name": "screenshot", "parameters": {"type": "object", "properties": {}}}


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="sk-client-key", max_retries=0)


@pytest.mark.parametrize(("model", "answerer"), [("fake/plain", "plain"), ("fusion/trio", "a")])
@pytest.mark.parametrize("role", ["system", "developer", "assistant"])
def test_an_image_outside_a_user_message_follows_it_in_a_user_turn(
    upstream: FakeUpstream, server: str, model: str, answerer: str, role: str
) -> None:
    upstream.script(answerer, Script(content="A red dot."))
    content = [{"type": "input_text", "text": "Note this."}, IMAGE]
    history: list[Any] = [{"role": role, "content": content}, {"role": "user", "content": "What was shown?"}]

    with sdk(server) as client:
        response = client.responses.create(model=model, input=history)

    assert response.status == "completed"
    chat_role = "system" if role == "developer" else role
    assert upstream.calls_for(answerer)[0].body["messages"][-3:] == [
        {"role": chat_role, "content": "Note this."},
        {"role": "user", "content": [CHAT_IMAGE]},
        {"role": "user", "content": "What was shown?"},
    ]


@pytest.mark.parametrize(("model", "answerer"), [("fake/plain", "plain"), ("fusion/trio", "a")])
def test_a_function_call_output_of_parts_keeps_its_text_and_its_images(
    upstream: FakeUpstream, server: str, model: str, answerer: str
) -> None:
    upstream.script(answerer, Script(content="Two screenshots."))
    second = {**CALL, "call_id": "call_s2"}
    history: list[Any] = [
        {"role": "user", "content": "Take two screenshots."},
        CALL,
        second,
        {
            "type": "function_call_output",
            "call_id": "call_s1",
            "output": [{"type": "input_text", "text": "Window 1:"}, {"type": "input_text", "text": " a form."}, IMAGE],
        },
        {
            "type": "function_call_output",
            "call_id": "call_s2",
            "output": [{"type": "input_file", "file_data": PDF, "filename": "page.pdf"}],
        },
    ]

    with sdk(server) as client:
        response = client.responses.create(model=model, input=history, tools=[TOOL])  # type: ignore[list-item]

    assert response.status == "completed"
    messages = upstream.calls_for(answerer)[0].body["messages"]
    media_turn = {
        "role": "user",
        "content": [
            {"type": "text", "text": "Images and files from the output of tool call call_s1:"},
            CHAT_IMAGE,
            {"type": "text", "text": "Images and files from the output of tool call call_s2:"},
            {"type": "file", "file": {"file_data": PDF, "filename": "page.pdf"}},
        ],
    }
    if model.startswith("fusion/"):  # a panelist is offered no tools: the calls and their results as text
        assert messages[-3:] == [
            {"role": "user", "content": "[tool result]\nWindow 1:\n a form."},
            {"role": "user", "content": "[tool result]\n"},
            media_turn,
        ]
        return
    screenshot = {"name": "screenshot", "arguments": "{}"}
    assert messages[-4:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_s1", "type": "function", "function": screenshot},
                {"id": "call_s2", "type": "function", "function": screenshot},
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_s1",
            "content": [{"type": "text", "text": "Window 1:"}, {"type": "text", "text": " a form."}],
        },
        {"role": "tool", "tool_call_id": "call_s2", "content": ""},
        media_turn,
    ]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "input_image", "file_id": "file-1"}, "input[2].output[0].image_url"),
        ({"type": "input_image", "image_url": PNG, "detail": "tiny"}, "input[2].output[0].detail"),
        ({"type": "input_audio", "input_audio": {}}, "input[2].output[0].type"),
        ({"type": "input_text"}, "input[2].output[0].text"),
    ],
)
def test_a_function_call_output_part_chat_cannot_take_is_a_400_naming_it(
    upstream: FakeUpstream, server: str, part: dict[str, Any], param: str
) -> None:
    history: list[Any] = [
        {"role": "user", "content": "Shoot."},
        CALL,
        {"type": "function_call_output", "call_id": "call_s1", "output": [part]},
    ]
    with sdk(server) as client, pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="fake/plain", input=history)

    assert raised.value.body["param"] == param  # type: ignore[index]
    assert not upstream.calls_for("plain")
