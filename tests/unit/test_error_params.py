"""Parameter names in errors: a reason apart from its parameter, Anthropic's paths, chat names renamed."""

from __future__ import annotations

import pytest

from openfusion.api.messages.errors import anthropic_path, error_body
from openfusion.api.params import ParamNames, renamed
from openfusion.errors import InvalidRequest, NotFound, invalid_value, missing

NAMES = ParamNames(
    fields={"max_completion_tokens": "max_output_tokens", "messages": "input"},
    messages=["instructions", "input[0]", "input[2]"],
    tools=[1, 3],
    tool_fields={".function.name": ".name", ".function": ""},
)


def test_a_reason_is_what_the_message_says_of_its_parameter() -> None:
    assert invalid_value("tools[0].name", "too long").reason == "too long"
    assert missing("max_tokens").reason == "Field required"
    assert missing("input[0].image_url", " (file ids are not supported)").reason == (
        "Field required (file ids are not supported)"
    )
    assert InvalidRequest("Too many messages: 9.", param="messages").reason is None
    assert InvalidRequest("Invalid value for 'x': bad.").reason is None  # no parameter to tell apart


@pytest.mark.parametrize(
    ("chat", "own"),
    [
        ("max_completion_tokens", "max_output_tokens"),
        ("messages", "input"),
        ("messages[2].content[0].type", "input[2]"),  # a chat message's parts need not be the client's
        ("messages[7]", "input"),  # no such chat message: the list
        ("tools[1].function.name", "tools[3].name"),
        ("tools[0].function", "tools[1]"),
        ("tools[0].parameters.preset", "tools[1].parameters.preset"),
        ("tool_choice.function.name", "tool_choice.name"),
        ("plugins[0].preset", "plugins[0].preset"),
        ("model", "model"),
    ],
)
def test_chat_parameters_get_the_clients_names(chat: str, own: str) -> None:
    assert NAMES.rename(chat) == own


def test_renamed_rewrites_the_parameter_in_the_message_too() -> None:
    error = renamed(invalid_value("max_completion_tokens", "1000 is over this server's limit of 100"), NAMES)
    assert error.param == "max_output_tokens"
    assert error.message == "Invalid value for 'max_output_tokens': 1000 is over this server's limit of 100."
    assert isinstance(error, InvalidRequest) and error.reason == "1000 is over this server's limit of 100"
    assert renamed(NotFound("no such model", param="model"), NAMES).message == "no such model"


def test_anthropic_errors_lead_with_the_path() -> None:
    assert anthropic_path("messages[0].content[12].type") == "messages.0.content.12.type"
    body = error_body(invalid_value("messages[1].content[0].type", "content blocks of type 'video' are not supported"))
    message = "messages.1.content.0.type: content blocks of type 'video' are not supported"
    assert body == {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    assert error_body(missing("max_tokens"))["error"]["message"] == "max_tokens: Field required"
    not_json = InvalidRequest("The request body is not valid JSON: unexpected character.", param="body")
    assert error_body(not_json)["error"]["message"] == not_json.message  # about the body, not a parameter
    assert error_body(NotFound("Model 'x' not found.", param="model"))["error"]["message"] == "Model 'x' not found."
