"""Values the caller's own API refuses are refused here first: a 400 in the caller's dialect, naming the field.

On /v1/messages Anthropic's shape (`{"type": "error", "error": {"type": "invalid_request_error", "message":
"messages.1.content.0.input: …"}}`), on /v1/responses OpenAI's (`{"error": {…, "param": "tools[0].parameters"}}`).
Each is checked for a fusion model, a pass-through model translated to chat, and a pass-through model whose
provider speaks the dialect itself (the body forwarded as sent): none of them may reach a model. Read through the
official SDKs, against the real server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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

from .conftest import server_environ

KEY = "sk-any-client-key-0123"
HI = {"role": "user", "content": "Hi"}
# Fusion; a pass-through translated to chat; a pass-through to a provider that speaks the dialect natively.
MESSAGES_MODELS = ("fusion/trio", "fake/solo", "claude/opus")
RESPONSES_MODELS = ("fusion/trio", "fake/solo", "native/plain")
IMAGE = "data:image/png;base64,iVBORw0KGgo="


@pytest.fixture
def gateway(
    upstream: FakeUpstream,
    fake_upstream: tuple[FakeUpstream, str],
    anthropic_native: tuple[FakeAnthropic, str],
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> Iterator[str]:
    """openfusion with `fake/*` on a chat provider, `native/*` on one that speaks the Responses API and `claude/*`
    on one that speaks Anthropic Messages."""
    native = ProviderConfig(name="native", base_url=f"{fake_upstream[1]}/v1", api_key_env="FAKE_KEY",
                            models=["native/*"], strip_prefix=True, responses=True)  # fmt: skip
    claude = ProviderConfig(name="claude", base_url=f"{anthropic_native[1]}/v1", api_key_env="FAKE_KEY",
                            models=["claude/*"], strip_prefix=True, messages=True)  # fmt: skip
    settings = make_settings(providers=[*make_settings().providers, native, claude],
                             activity={"path": tmp_path / "activity.sqlite3"})  # fmt: skip
    with serve_in_thread(create_app(settings, environ=server_environ())) as url:
        yield url


def messages_refusal(url: str, **request: Any) -> str:
    """The message of the 400 the anthropic SDK raises for this request, checked to be in Anthropic's shape."""
    body = {"max_tokens": 2048, **request}
    client = anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0)
    with client, pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(**body)
    error: Any = raised.value.body
    assert raised.value.status_code == 400
    assert set(error) == {"type", "error"} and error["type"] == "error", error
    assert set(error["error"]) == {"type", "message"} and error["error"]["type"] == "invalid_request_error", error
    return str(error["error"]["message"])


def responses_refusal(url: str, **request: Any) -> dict[str, Any]:
    """The error object of the 400 the openai SDK raises for this request, checked to be in OpenAI's shape."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    with client, pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(**request)
    body = raised.value.response.json()
    assert raised.value.status_code == 400 and set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["type"] == "invalid_request_error", error
    return error


def assert_no_model_called(upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str]) -> None:
    assert upstream.calls == []
    assert anthropic_native[0].calls == []


# ---------------------------------------------------------------------------------------------- /v1/messages


def test_a_role_messages_does_not_have_is_refused(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    """Anthropic's `messages` take user, assistant and (mid-conversation) system turns; nothing else."""
    for model in MESSAGES_MODELS:
        for role in ("developer", "tool", "function"):
            message = messages_refusal(gateway, model=model, messages=[HI, {"role": role, "content": "Be brief."}])
            assert message == f"messages.1.role: {role!r} (expected user, assistant or system)", (model, message)
    assert_no_model_called(upstream, anthropic_native)


def test_a_system_turn_holds_text_blocks_only(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    """A system turn's blocks are text (Anthropic's SystemMessageParam), like the top-level `system`: any other
    block would be dropped without a word."""
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    for model in MESSAGES_MODELS:
        turn = {"role": "system", "content": [{"type": "text", "text": "Look:"}, image]}
        message = messages_refusal(gateway, model=model, messages=[HI, turn])
        assert message.startswith("messages.1.content.1.type: a system message takes text blocks only"), message
        top_level = messages_refusal(gateway, model=model, system=[image], messages=[HI])
        assert top_level.startswith("system.0.type: a system message takes text blocks only"), top_level
    assert_no_model_called(upstream, anthropic_native)


def test_a_system_turn_is_taken_as_claude_code_sends_it(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    """A mid-conversation system message (Anthropic's, on Claude Opus 4.8; Claude Code sends its agent list so):
    a system message for a chat model, forwarded as sent to a provider that speaks Messages."""
    turn = {"role": "system", "content": "Available agent types: Explore."}
    blocks = {"role": "system", "content": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "x"}}]}
    with anthropic.Anthropic(base_url=gateway, api_key=KEY, max_retries=0) as client:
        for model in MESSAGES_MODELS:
            client.messages.create(model=model, max_tokens=2048, messages=[HI, turn, blocks])  # type: ignore[list-item]

    expected = [{"role": "user", "content": "Hi"}, {"role": "system", "content": "Available agent types: Explore."},
                {"role": "system", "content": "Be brief."}]  # fmt: skip
    assert upstream.calls_for("solo")[0].body["messages"] == expected
    assert upstream.calls_for("synth")[0].body["messages"][-3:] == expected
    assert anthropic_native[0].calls[0].body["messages"] == [HI, turn, blocks]


@pytest.mark.parametrize(
    ("value", "reason"),
    [("ls -la", "expected an object"), (["ls"], "expected an object"), (None, "expected an object")],
)
def test_a_tool_use_input_that_is_no_object_is_refused(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str, value: Any, reason: str
) -> None:
    for model in MESSAGES_MODELS:
        call = {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": value}
        result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}
        conversation = [HI, {"role": "assistant", "content": [call]}, {"role": "user", "content": [result]}]
        message = messages_refusal(gateway, model=model, messages=conversation)
        assert message == f"messages.1.content.0.input: {reason}", (model, message)
    assert_no_model_called(upstream, anthropic_native)


def test_a_tool_use_without_input_is_refused(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    for model in MESSAGES_MODELS:
        call = {"type": "tool_use", "id": "toolu_1", "name": "bash"}
        result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}
        conversation = [HI, {"role": "assistant", "content": [call]}, {"role": "user", "content": [result]}]
        message = messages_refusal(gateway, model=model, messages=conversation)
        assert message.startswith("messages.1.content.0.input: Field required"), (model, message)
    assert_no_model_called(upstream, anthropic_native)


CALL = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "22 C"}
AND = {"type": "text", "text": "And tomorrow?"}


@pytest.mark.parametrize(
    ("conversation", "path"),
    [
        ([{"role": "user", "content": [RESULT]}], "messages.0.content.0"),  # no call at all
        (
            [HI, {"role": "assistant", "content": "Let me see."}, {"role": "user", "content": [RESULT]}],
            "messages.2.content.0",
        ),  # an answer without the call
        (
            [
                HI,
                {"role": "assistant", "content": [CALL]},
                {"role": "user", "content": [RESULT]},
                {"role": "assistant", "content": "22 C in Oslo."},
                {"role": "user", "content": [RESULT, AND]},
            ],
            "messages.4.content.0",
        ),  # the result of a call two turns back, given again
    ],
)
def test_a_tool_result_without_its_tool_use_is_refused(
    upstream: FakeUpstream,
    anthropic_native: tuple[FakeAnthropic, str],
    gateway: str,
    conversation: list[Any],
    path: str,
) -> None:
    """Anthropic refuses a tool_result whose tool_use is not in the message before it, as chat providers refuse a
    tool message that follows no call of its id: for a fusion that was its synthesizer's 400, told as a 502
    (api_error) or a stream's `error` event, for the client's own mistake."""
    for model in MESSAGES_MODELS:
        message = messages_refusal(gateway, model=model, messages=conversation)
        assert message == (f"{path}.tool_use_id: unexpected tool_use_id 'toolu_1': each tool_result block must have "
                           "a corresponding tool_use block in the previous message"), (model, message)  # fmt: skip
    assert_no_model_called(upstream, anthropic_native)


@pytest.mark.parametrize("kind", ["string", "array", 5, None])
def test_an_input_schema_of_another_type_than_object_is_refused(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str, kind: Any
) -> None:
    """A tool's input is an object (Anthropic: "input_schema.type: Input should be 'object'"; a chat provider refuses
    such a function's parameters too, for a fusion at its synthesizer, after the panel was paid for)."""
    tools = [{"name": "lookup", "input_schema": {"type": kind, "items": {"type": "string"}}}]
    for model in MESSAGES_MODELS:
        message = messages_refusal(gateway, model=model, messages=[HI], tools=tools)
        assert message == "tools.0.input_schema.type: a tool's input schema is of type 'object'", (model, message)
    assert_no_model_called(upstream, anthropic_native)


@pytest.mark.parametrize(
    "answer",
    [
        [AND],  # no result at all
        [{**RESULT, "tool_use_id": "toolu_2"}],  # the result of one call of two
    ],
)
def test_a_tool_use_without_its_tool_result_is_refused(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str, answer: list[Any]
) -> None:
    """Anthropic refuses calls left unanswered by the next message ("tool_use ids were found without tool_result
    blocks immediately after"), as chat providers refuse tool calls without their tool messages."""
    calls = [CALL, {**CALL, "id": "toolu_2"}] if answer[0].get("tool_use_id") == "toolu_2" else [CALL]
    conversation = [HI, {"role": "assistant", "content": calls}, {"role": "user", "content": answer}]
    for model in MESSAGES_MODELS:
        message = messages_refusal(gateway, model=model, messages=conversation)
        assert message == ("messages.1: tool_use ids were found without tool_result blocks immediately after: "
                           "'toolu_1'. Each tool_use block must have a corresponding tool_result block in the next "
                           "message"), (model, message)  # fmt: skip
    assert_no_model_called(upstream, anthropic_native)


def test_a_fusion_prefill_with_tool_use_is_refused(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    """A final assistant turn (a prefill) may hold calls no result answers yet; a fusion's synthesizer, a chat model,
    refuses them (a 502 once the panel and the judge were paid for): a 400 before any call. A pass-through is left to
    its provider, as before."""
    conversation = [HI, {"role": "assistant", "content": [CALL]}]
    message = messages_refusal(gateway, model="fusion/trio", messages=conversation)
    assert message.startswith("messages.1: ") and "'toolu_1'" in message, message
    assert_no_model_called(upstream, anthropic_native)
    with anthropic.Anthropic(base_url=gateway, api_key=KEY, max_retries=0) as client:
        client.messages.create(model="claude/opus", max_tokens=2048, messages=conversation)  # type: ignore[arg-type]
    assert anthropic_native[0].calls[0].body["messages"] == conversation


def test_a_tool_result_may_answer_a_call_of_the_assistant_turn_before(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    """Anthropic joins consecutive messages of one role into one turn: a call in the first of two assistant
    messages is answered by the user message after the second."""
    conversation = [HI, {"role": "assistant", "content": [CALL]}, {"role": "assistant", "content": "Checking."},
                    {"role": "user", "content": [RESULT]}]  # fmt: skip
    with anthropic.Anthropic(base_url=gateway, api_key=KEY, max_retries=0) as client:
        client.messages.create(model="claude/opus", max_tokens=2048, messages=conversation)  # type: ignore[arg-type]

    assert anthropic_native[0].calls[0].body["messages"] == conversation


def test_an_image_by_file_id_is_refused_for_a_chat_model(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    """A chat message cannot carry a file id (a provider that speaks Messages gets it as sent)."""
    image = {"type": "image", "source": {"type": "file", "file_id": "file_011"}}
    for model in MESSAGES_MODELS[:2]:
        message = messages_refusal(gateway, model=model, messages=[{"role": "user", "content": [image]}])
        assert message == ("messages.0.content.0.source: an image source must be base64 data or a URL (file ids are "
                           "not supported)"), (model, message)  # fmt: skip
    assert_no_model_called(upstream, anthropic_native)


@pytest.mark.parametrize("budget", [10, 1023])
def test_a_thinking_budget_below_1024_is_refused(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str, budget: int
) -> None:
    thinking = {"type": "enabled", "budget_tokens": budget}
    for model in MESSAGES_MODELS:
        message = messages_refusal(gateway, model=model, thinking=thinking, messages=[HI])
        assert message == "thinking.budget_tokens: it must be at least 1024", (model, message)
    client = anthropic.Anthropic(base_url=gateway, api_key=KEY, max_retries=0)
    with client, pytest.raises(anthropic.BadRequestError) as counting:  # counting takes the same request
        client.messages.count_tokens(model="claude/opus", thinking=thinking, messages=[HI])  # type: ignore[arg-type]
    assert counting.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                   "message": "thinking.budget_tokens: it must be at least 1024"}}  # fmt: skip
    assert_no_model_called(upstream, anthropic_native)


# --------------------------------------------------------------------------------------------- /v1/responses


@pytest.mark.parametrize("detail", ["bogus", "HIGH", 5])
def test_an_image_detail_openai_does_not_have_is_refused(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str, detail: Any
) -> None:
    image = {"type": "input_image", "image_url": IMAGE, "detail": detail}
    for model in RESPONSES_MODELS:
        for role in ("user", "system"):
            content = [{"type": "input_text", "text": "What is it?"}, image]
            error = responses_refusal(gateway, model=model, input=[{"role": role, "content": content}])
            assert error["param"] == "input[0].content[1].detail", (model, error)
            assert (
                "'input[0].content[1].detail'" in error["message"]
                and "low, high, auto or original" in (error["message"])
            ), error
    assert_no_model_called(upstream, anthropic_native)


@pytest.mark.parametrize(
    ("fmt", "param"),
    [
        ({}, "text.format.type"),
        ({"name": "answer", "schema": {"type": "object"}}, "text.format.type"),
        ({"type": None}, "text.format.type"),
        ("json_object", "text.format"),
        ({"type": "json_schema", "schema": {"type": "object"}}, "text.format.name"),
        ({"type": "json_schema", "name": "", "schema": {"type": "object"}}, "text.format.name"),
        ({"type": "json_schema", "name": "my answer", "schema": {"type": "object"}}, "text.format.name"),
        ({"type": "json_schema", "name": "answer"}, "text.format.schema"),
    ],
)
def test_a_text_format_without_its_type_name_or_schema_is_refused(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str, fmt: Any, param: str
) -> None:
    for model in RESPONSES_MODELS:
        error = responses_refusal(gateway, model=model, input="Hi", text={"format": fmt})
        assert error["param"] == param and f"'{param}'" in error["message"], (model, error)
    assert_no_model_called(upstream, anthropic_native)


@pytest.mark.parametrize(
    "items",
    [
        [{"type": "function_call_output", "call_id": "call_1", "output": "22 C"}],
        [
            {"role": "user", "content": "Oslo?"},
            {"type": "function_call_output", "call_id": "call_1", "output": "22 C"},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        ],  # after, not before
    ],
)
def test_a_function_call_output_without_its_call_is_refused(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str, items: list[Any]
) -> None:
    """OpenAI refuses an output no function_call before it asked for ("No tool call found for function call
    output"), as chat providers refuse such a tool message: for a fusion that was its synthesizer's 400, told as a
    502 or a `response.failed`, for the client's own mistake."""
    position = next(i for i, item in enumerate(items) if item.get("type") == "function_call_output")
    for model in RESPONSES_MODELS:
        error = responses_refusal(gateway, model=model, input=items)
        assert error["param"] == f"input[{position}].call_id", (model, error)
        assert error["message"] == (f"Invalid value for 'input[{position}].call_id': no function call with call_id "
                                    "'call_1' comes before this output."), error  # fmt: skip
    assert_no_model_called(upstream, anthropic_native)


def test_a_function_call_without_its_output_is_refused(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    """OpenAI refuses a call left without its output ("No tool output found for function call"), as chat providers
    refuse tool calls without their tool messages."""
    call = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"}
    for model in RESPONSES_MODELS:
        error = responses_refusal(gateway, model=model, input=[{"role": "user", "content": "Oslo?"}, call])
        assert error["param"] == "input[1]", (model, error)
        assert error["message"] == ("Invalid value for 'input[1]': no function_call_output answers the function call "
                                    "with call_id 'call_1'."), error  # fmt: skip
    assert_no_model_called(upstream, anthropic_native)


@pytest.mark.parametrize("parameters", ['{"type": "object"}', ["q"], 5])
def test_function_parameters_that_are_no_object_are_refused(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str, parameters: Any
) -> None:
    tools = [{"type": "web_search"}, {"type": "function", "name": "lookup", "parameters": parameters}]
    for model in RESPONSES_MODELS:
        error = responses_refusal(gateway, model=model, input="Hi", tools=tools)
        assert error["param"] == "tools[1].parameters", (model, error)
        assert error["message"] == "Invalid value for 'tools[1].parameters': expected a JSON schema object.", error
    assert_no_model_called(upstream, anthropic_native)


@pytest.mark.parametrize("kind", ["string", "array", 5, None])
def test_function_parameters_of_another_type_than_object_are_refused(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str, kind: Any
) -> None:
    """OpenAI: "schema must be a JSON Schema of 'type: "object"'" (a fusion learnt it from its synthesizer)."""
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": kind, "items": {"type": "string"}}}]
    for model in RESPONSES_MODELS:
        error = responses_refusal(gateway, model=model, input="Hi", tools=tools)
        assert error["param"] == "tools[0].parameters.type", (model, error)
        message = "Invalid value for 'tools[0].parameters.type': a function's parameters are a schema of type 'object'."
        assert error["message"] == message, error
    assert_no_model_called(upstream, anthropic_native)


@pytest.mark.parametrize("tools", [[], [{"type": "function", "name": "lookup"}, {"type": "web_search"}]])
def test_a_tool_choice_naming_no_function_tool_is_refused(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str, tools: list[Any]
) -> None:
    """As OpenAI refuses it, and as /v1/messages refuses a tool_choice naming no tool."""
    choice = {"type": "function", "name": "get_weather"}
    for model in RESPONSES_MODELS:
        error = responses_refusal(gateway, model=model, input="Hi", tools=tools, tool_choice=choice)
        assert error["param"] == "tool_choice.name", (model, error)
        assert error["message"] == "Invalid value for 'tool_choice.name': no function tool is named 'get_weather'."
    assert_no_model_called(upstream, anthropic_native)


def test_values_openai_takes_go_through(upstream: FakeUpstream, gateway: str) -> None:
    """Each refusal above has its valid neighbours: an image's `original` detail or none, a function without
    parameters (null), a named json_schema format, and a `max_output_tokens` below 16 (OpenAI's own models refuse
    it, but no documented minimum exists, and other models take it: the provider is the judge)."""
    content = [{"type": "input_text", "text": "Compare."}, {"type": "input_image", "image_url": IMAGE,
               "detail": "original"}, {"type": "input_image", "image_url": IMAGE, "detail": None}]  # fmt: skip
    tool = {"type": "function", "name": "lookup", "parameters": None, "strict": None}
    fmt = {"type": "json_schema", "name": "an_answer-1", "schema": {"type": "object"}}
    with openai.OpenAI(base_url=f"{gateway}/v1", api_key=KEY, max_retries=0) as client:
        for model in ("fake/solo", "native/plain"):
            client.responses.create(model=model, input=[{"role": "user", "content": content}], tools=[tool],  # type: ignore[list-item]
                                    text={"format": fmt}, max_output_tokens=10)  # type: ignore[arg-type]  # fmt: skip

    chat = upstream.calls_for("solo")[0].body
    assert [part.get("image_url") for part in chat["messages"][0]["content"]] == [
        None, {"url": IMAGE, "detail": "original"}, {"url": IMAGE}]  # fmt: skip
    assert chat["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {}}
    assert chat["response_format"]["json_schema"]["name"] == "an_answer-1" and chat["max_completion_tokens"] == 10
    native = upstream.calls_for("plain")[0].body
    assert native["input"][0]["content"] == content and native["tools"] == [tool] and native["max_output_tokens"] == 10
