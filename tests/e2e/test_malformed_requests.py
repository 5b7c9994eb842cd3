"""Hostile or broken requests against the real server: each gets a clear 400 (or is let go quietly), never a 500."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from fakes.upstream import FakeUpstream, Script, wait_until

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]


class Capture(logging.Handler):
    """Every record of the loggers it is attached to."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_logs() -> Iterator[Capture]:
    """openfusion's and uvicorn's log records while the test runs."""
    capture = Capture()
    loggers = [logging.getLogger(name) for name in ("openfusion", "uvicorn.error")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(capture)
        logger.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(capture)
            logger.setLevel(level)


def test_a_client_that_aborts_its_upload_is_one_info_line(
    server: str, upstream: FakeUpstream, server_logs: Capture
) -> None:
    address = urlsplit(server)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: openfusion\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\n\r\n"
    )
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(head + b'{"model": "fusion/trio", "messages": [{"role": "user", "content": "')
    # The connection is closed with ~4,930 bytes still owed: the server sees the client leave mid-body.

    def aborted() -> list[logging.LogRecord]:
        return [r for r in server_logs.records if "while sending its body" in r.getMessage()]

    wait_until(lambda: bool(aborted()), timeout=10)
    assert httpx.get(f"{server}/healthz").status_code == 200  # the server goes on; later records have landed
    assert len(aborted()) == 1
    record = aborted()[0]
    assert record.levelno == logging.INFO and record.exc_info is None
    assert [r for r in server_logs.records if r.levelno >= logging.WARNING] == []
    assert upstream.calls == []


def assert_400(response: httpx.Response, param: str) -> dict[str, Any]:
    """An OpenAI-format 400 naming `param`."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert "Traceback" not in error["message"] and "pydantic" not in error["message"].lower()
    return dict(error)


@pytest.mark.parametrize("value", [5, True, "example.com", ["example.com", 7], [""], {"a": 1}])
@pytest.mark.parametrize("where", ["plugin", "server_tool"])
def test_domain_exclusions_that_are_not_lists_of_names_are_400(
    server: str, upstream: FakeUpstream, value: Any, where: str
) -> None:
    for key in ("excluded_domains", "blocked_domains"):
        tools = [{"type": "web_search"}, {"type": "openrouter:web_fetch", "parameters": {key: value}}]
        if where == "plugin":
            body = {"model": "fusion/trio", "messages": HI, "plugins": [{"id": "fusion", "tools": tools}]}
            param = f"plugins[0].tools[1].parameters.{key}"
        else:
            server_tool = {"type": "openrouter:fusion", "parameters": {"tools": tools}}
            body = {"model": "fake/outer", "messages": HI, "tools": [server_tool]}
            param = f"tools[0].parameters.tools[1].parameters.{key}"
        for stream in (False, True):
            assert_400(httpx.post(f"{server}{CHAT}", json={**body, "stream": stream}, timeout=20), param)
    assert upstream.calls == []  # refused before anything was sent: an exclusion is enforced or refused


def test_research_tool_parameters_must_be_an_object(server: str, upstream: FakeUpstream) -> None:
    plugin = {"id": "fusion", "tools": [{"type": "web_fetch", "parameters": "excluded_domains=example.com"}]}
    response = httpx.post(f"{server}{CHAT}", json={"model": "fusion/trio", "messages": HI, "plugins": [plugin]})
    assert_400(response, "plugins[0].tools[0].parameters")


@pytest.mark.parametrize(
    ("tool_calls", "param"),
    [
        (5, "messages[1].tool_calls"),
        ("call it", "messages[1].tool_calls"),
        ({"id": "call_1"}, "messages[1].tool_calls"),
        ([5], "messages[1].tool_calls[0]"),
        ([None], "messages[1].tool_calls[0]"),
        ([{"id": "call_1", "type": "function", "function": "lookup"}], "messages[1].tool_calls[0].function"),
        ([{"id": 1, "type": "function", "function": {"name": "f"}}], "messages[1].tool_calls[0].id"),
        ([{"function": {"name": ["f"], "arguments": "{}"}}], "messages[1].tool_calls[0].function.name"),
        ([{"function": {"name": "f", "arguments": {"q": 1}}}], "messages[1].tool_calls[0].function.arguments"),
    ],
)
def test_assistant_tool_calls_that_are_not_a_list_of_calls_are_400(
    server: str, upstream: FakeUpstream, tool_calls: Any, param: str
) -> None:
    for model in ("fusion/trio", "fake/plain"):
        for last in ("user", "tool"):  # a new question, or an agent loop's step
            messages = [
                {"role": "user", "content": "Look it up."},
                {"role": "assistant", "content": None, "tool_calls": tool_calls},
                {"role": last, "content": "found", **({"tool_call_id": "call_1"} if last == "tool" else {})},
            ]
            response = httpx.post(f"{server}{CHAT}", json={"model": model, "messages": messages}, timeout=20)
            error = assert_400(response, param)
            assert "ToolCall" not in error["message"]  # no class names of ours
    assert upstream.calls == []


def test_well_formed_tool_calls_still_pass(server: str, upstream: FakeUpstream) -> None:
    messages = [
        {"role": "user", "content": "Look it up."},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "found"},
        {"role": "user", "content": "And?"},
    ]  # fmt: skip
    for model in ("fusion/trio", "fake/plain"):
        response = httpx.post(f"{server}{CHAT}", json={"model": model, "messages": messages}, timeout=20)
        assert response.status_code == 200, response.text
    assert upstream.calls_for("plain")[0].body["messages"] == messages  # pass-through forwards them untouched


def _nested(depth: int) -> Any:
    """`depth` levels of arrays and objects, alternating, around a string."""
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize("model", ["fusion/trio", "fake/plain"])
def test_deeply_nested_json_is_400(server: str, upstream: FakeUpstream, model: str) -> None:
    head = b'{"model": "' + model.encode() + b'", "messages": [{"role": "user", "content": "Hi"}], "'
    for depth in (129, 255, 256, 600, 1024, 1025, 5000):
        for field in (b"response_format", b"metadata"):
            # The body object is a level, so the field's value nests `depth` levels more: the body `depth + 1`.
            raw = head + field + b'": ' + b"[" * depth + b"]" * depth + b"}"
            response = httpx.post(
                f"{server}{CHAT}", content=raw, headers={"content-type": "application/json"}, timeout=20
            )
            error = assert_400(response, "body")
            assert "128 levels" in error["message"], (depth, field)
    assert upstream.calls == []


@pytest.mark.parametrize("model", ["fusion/trio", "fake/plain"])
def test_nesting_up_to_the_limit_is_served(server: str, upstream: FakeUpstream, model: str) -> None:
    body = {"model": model, "messages": HI, "metadata": _nested(127)}  # 128 levels with the body itself
    response = httpx.post(f"{server}{CHAT}", json=body, timeout=20)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "tool_call",
    [
        {"id": "call_1", "function": {"name": 5, "arguments": "{}"}},
        {"id": 7, "function": {"name": "lookup", "arguments": "{}"}},
    ],
)
def test_a_synthesizer_tool_call_of_the_wrong_shape_is_upstream_invalid_response(
    server: str, upstream: FakeUpstream, tool_call: dict[str, Any]
) -> None:
    upstream.script("synth", Script(tool_calls=[tool_call]))
    body = {"model": "fusion/trio", "messages": HI}

    response = httpx.post(f"{server}{CHAT}", json=body, timeout=20)
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "upstream_invalid_response" and error["metadata"]["model"] == "fake/synth"

    with httpx.stream("POST", f"{server}{CHAT}", json={**body, "stream": True}, timeout=20) as streamed:
        assert streamed.status_code == 200
        events = [line.removeprefix("data: ") for line in streamed.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["error"]["code"] == "upstream_invalid_response"
    assert last["choices"][0]["finish_reason"] == "error"
    assert len(upstream.calls_for("synth")) == 2  # the call was made and its answer refused, once per request


def _user(content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def _image(detail: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": detail}}


CALL_1 = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
CALL_2 = {**CALL_1, "id": "call_2"}
FUSION_SHAPES = [
    ({"messages": _user([1])}, "messages[0].content[0]"),
    ({"messages": _user([])}, "messages[0].content"),
    ({"messages": _user([{}])}, "messages[0].content[0].type"),
    ({"messages": _user([{"type": "text"}])}, "messages[0].content[0].text"),
    ({"messages": _user([{"type": "text", "text": 1}])}, "messages[0].content[0].text"),
    ({"messages": _user([{"type": "image_url"}])}, "messages[0].content[0].image_url"),
    ({"messages": _user([{"type": "image_url", "image_url": {}}])}, "messages[0].content[0].image_url.url"),
    ({"messages": _user([_image("bogus")])}, "messages[0].content[0].image_url.detail"),
    ({"messages": _user([{"type": "text", "text": "Q?"}, _image("HIGH")])}, "messages[0].content[1].image_url.detail"),
    ({"messages": _user([_image(5)])}, "messages[0].content[0].image_url.detail"),
    ({"messages": _user([{"type": "input_audio", "input_audio": "x"}])}, "messages[0].content[0].input_audio"),
    ({"messages": _user([{"type": "file", "file": "x"}])}, "messages[0].content[0].file"),
    ({"messages": [*HI, {"role": "tool", "content": "found"}]}, "messages[1].tool_call_id"),
    ({"messages": [*HI, {"role": "tool", "tool_call_id": "call_9", "content": "found"}]}, "messages[1].tool_call_id"),
    ({"messages": [*HI, {"role": "assistant", "tool_calls": [{}]}, *HI]}, "messages[1].tool_calls[0].id"),
    ({"messages": [*HI, {"role": "assistant", "tool_calls": [CALL_1]}, *HI]}, "messages[1].tool_calls"),
    ({"messages": [*HI, {"role": "assistant", "tool_calls": [CALL_1]}]}, "messages[1].tool_calls"),
    ({"messages": HI, "tools": [{}]}, "tools[0].type"),
    ({"messages": HI, "tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
    ({"messages": HI, "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
     "tools[0].function.parameters"),
    ({"messages": HI, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools[0].function.parameters.type"),
    ({"messages": HI, "tool_choice": "any"}, "tool_choice"),
    ({"messages": HI, "tool_choice": {"type": "function"}}, "tool_choice.function.name"),
    ({"messages": HI, "response_format": {"type": 1}}, "response_format.type"),
    ({"messages": HI, "response_format": {"type": "json_schema", "json_schema": "x"}}, "response_format.json_schema"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "param"), FUSION_SHAPES, ids=[param for _, param in FUSION_SHAPES])
def test_a_fusion_request_no_model_could_read_is_400_before_any_call(
    server: str, upstream: FakeUpstream, body: dict[str, Any], param: str
) -> None:
    """Every model a fusion calls reads the conversation (and the synthesizer the tools): a part or a tool none
    could take got a 502 (or a 200 with an error chunk) once the panel, and for tools the judge, had been paid for."""
    for stream in (False, True):
        response = httpx.post(f"{server}{CHAT}", json={"model": "fusion/trio", "stream": stream, **body}, timeout=20)
        assert_400(response, param)
    assert upstream.calls == []


def _looked_up(*calls: dict[str, Any], answered: tuple[str, ...], then: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A question, an assistant's tool calls, tool messages answering the `answered` ones, then `then`."""
    results = [{"role": "tool", "tool_call_id": call_id, "content": "found"} for call_id in answered]
    return [*HI, {"role": "assistant", "content": None, "tool_calls": list(calls)}, *results, *then]


TOOL_1 = {"role": "tool", "tool_call_id": "call_1", "content": "found"}
REFUSED_CALLS = (
    "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
    "'tool_call_id'. The following tool_call_ids did not have response messages: call_1"
)
UNANSWERED = [
    (_looked_up(CALL_1, answered=(), then=HI), "messages[1].tool_calls", "'call_1'"),
    (_looked_up(CALL_1, answered=(), then=[]), "messages[1].tool_calls", "'call_1'"),  # a trailing call: OpenAI's 400
    (_looked_up(CALL_1, CALL_2, answered=("call_2",), then=HI), "messages[1].tool_calls", "'call_1'"),
    (_looked_up(CALL_1, answered=("call_1",), then=[{"role": "assistant", "content": "More?", "tool_calls": [CALL_2]},
                                                    *HI]), "messages[3].tool_calls", "'call_2'"),
    # Answered, but too late: OpenAI wants the tool messages right after the calls, before any other message.
    (_looked_up(CALL_1, answered=(), then=[*HI, TOOL_1]), "messages[1].tool_calls", "'call_1'"),
    (_looked_up(CALL_1, CALL_2, answered=("call_2",), then=[*HI, TOOL_1]), "messages[1].tool_calls", "'call_1'"),
    (_looked_up(CALL_1, answered=(), then=[{"role": "assistant", "content": "Hm."}, TOOL_1]), "messages[1].tool_calls",
     "'call_1'"),
]  # fmt: skip


@pytest.mark.parametrize(("messages", "param", "named"), UNANSWERED, ids=["user-after", "trailing", "one-of-two",
                                                                            "second-turn", "answered-after-a-user",
                                                                            "one-answered-after-a-user",
                                                                            "answered-after-an-assistant"])  # fmt: skip
def test_a_fusion_tool_call_no_tool_message_answers_is_400_before_any_call(
    server: str, upstream: FakeUpstream, messages: list[dict[str, Any]], param: str, named: str
) -> None:
    """Every chat provider refuses an assistant's tool call that no tool message answers: the synthesizer did, once
    the panel and the judge had been paid for, and the client got a 502 for its own mistake."""
    upstream.script("synth", Script(status=400, error_message=REFUSED_CALLS))  # as OpenAI answers it
    with openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as sdk:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as raised:
                sdk.chat.completions.create(model="fusion/trio", messages=messages, stream=stream)  # type: ignore[call-overload]
            error = raised.value.body
            assert isinstance(error, dict) and error["type"] == "invalid_request_error", error
            assert error["param"] == param, error
            assert "must be followed by tool messages" in error["message"] and named in error["message"], error
    assert upstream.calls == []


def test_an_unanswered_tool_call_is_left_to_the_provider_in_pass_through_and_tool_mode(
    server: str, upstream: FakeUpstream
) -> None:
    """A pass-through goes to one provider, whose own 400 the client gets; in tool mode the caller's own model reads
    the conversation first, before any panel: both forward it untouched, as before."""
    messages = _looked_up(CALL_1, answered=(), then=HI)
    tool = {"type": "openrouter:fusion", "parameters": {"analysis_models": ["fake/a", "fake/b"], "model": "fake/judge"}}
    with openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as sdk:
        sdk.chat.completions.create(model="fake/plain", messages=messages)  # type: ignore[arg-type]
        sdk.chat.completions.create(model="fake/outer", messages=messages, tools=[tool])  # type: ignore[arg-type, list-item]
    assert upstream.calls_for("plain")[0].body["messages"] == messages
    assert upstream.calls_for("outer")[0].body["messages"] == messages


def test_a_tool_message_after_another_message_is_400_in_tool_mode_and_left_to_the_provider_in_pass_through(
    server: str, upstream: FakeUpstream
) -> None:
    """A tool message answers the calls of the assistant message right before its run of tool messages, as OpenAI
    has it: one that comes after a user message is refused naming itself, before any call (the caller's own model, a
    chat model, would refuse it too). A pass-through forwards it untouched: its provider's rule, its provider's 400."""
    messages = _looked_up(CALL_1, answered=(), then=[*HI, TOOL_1])
    tool = {"type": "openrouter:fusion", "parameters": {"analysis_models": ["fake/a", "fake/b"], "model": "fake/judge"}}
    with openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as sdk:
        with pytest.raises(openai.BadRequestError) as raised:
            sdk.chat.completions.create(model="fake/outer", messages=messages, tools=[tool])  # type: ignore[arg-type, list-item]
        assert upstream.calls == []
        sdk.chat.completions.create(model="fake/plain", messages=messages)  # type: ignore[arg-type]
    error = raised.value.body
    assert isinstance(error, dict) and error["param"] == "messages[3].tool_call_id", error
    assert "'call_1' answers a tool call of an earlier assistant message" in error["message"], error
    assert "must follow the assistant message whose calls they answer directly" in error["message"], error
    assert upstream.calls_for("plain")[0].body["messages"] == messages


def test_tool_messages_right_after_their_calls_in_any_order_are_taken(server: str, upstream: FakeUpstream) -> None:
    """Parallel calls answered in another order, then a second round: as OpenAI takes them."""
    messages = [
        *_looked_up(CALL_1, CALL_2, answered=("call_2", "call_1"), then=[]),
        {"role": "assistant", "content": "And more.", "tool_calls": [{**CALL_1, "id": "call_3"}]},
        {"role": "tool", "tool_call_id": "call_3", "content": "found"},
        *HI,
    ]
    with openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as sdk:
        sdk.chat.completions.create(model="fusion/trio", messages=messages)  # type: ignore[arg-type]
    assert upstream.calls_for("synth")


def test_well_formed_parts_and_unknown_part_types_still_reach_the_panel(server: str, upstream: FakeUpstream) -> None:
    parts = [
        {"type": "text", "text": "What is in it?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        *[_image(detail) for detail in ("auto", "low", "high", "original", None)],
        {"type": "input_video", "video_url": "https://example.com/v.mp4"},  # a provider's own: left to it
    ]
    tools = [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}]
    body = {"model": "fusion/trio", "messages": _user(parts), "tools": tools, "tool_choice": "auto"}
    response = httpx.post(f"{server}{CHAT}", json=body, timeout=20)
    assert response.status_code == 200, response.text
    assert upstream.calls_for("a")[0].body["messages"][0]["content"] == parts


@pytest.mark.parametrize(
    ("field", "value"),
    [("stream", "yes"), ("stream", "false"), ("stream", 1), ("max_tokens", True), ("seed", 1.5), ("temperature", "0")],
)
def test_a_value_of_the_wrong_type_is_400_not_read_one_way_and_sent_another(
    server: str, upstream: FakeUpstream, field: str, value: Any
) -> None:
    """Lax reading took `"stream": "false"` as False while pass-through sent the string on, which a provider may read
    as true; `"max_tokens": true` bounded nothing. OpenAI refuses both; so does every surface here."""
    for model in ("fusion/trio", "fake/plain"):
        response = httpx.post(f"{server}/v1/chat/completions", json={"model": model, "messages": HI, field: value})
        assert_400(response, field)
    if field == "stream":
        for path, body in (
            ("/v1/responses", {"model": "fake/plain", "input": "Hi"}),
            ("/v1/messages", {"model": "fake/plain", "max_tokens": 10, "messages": HI}),
        ):
            refused = httpx.post(f"{server}{path}", json={**body, "stream": value})
            assert refused.status_code == 400, (path, refused.text)
    assert upstream.calls == []


def test_an_image_detail_openai_does_not_have_is_refused_to_the_sdk(server: str, upstream: FakeUpstream) -> None:
    content = [{"type": "text", "text": "What is it?"}, _image("ultra")]
    with openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as sdk:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as raised:
                sdk.chat.completions.create(model="fusion/trio", messages=_user(content), stream=stream)  # type: ignore[call-overload]
            assert raised.value.body["param"] == "messages[0].content[1].image_url.detail"  # type: ignore[index]
            assert "'ultra' (expected auto, low, high, original)" in raised.value.body["message"]  # type: ignore[index]
    assert upstream.calls == []
