"""The Messages dialect, pure: request translation, the writer's exact events, the token estimate."""

from __future__ import annotations

from typing import Any

import pytest

from openfusion.api.messages.request import parse_request, translate
from openfusion.api.messages.tokens import estimate_input_tokens
from openfusion.api.messages.writer import SIGNATURE_PREFIX, MessageWriter, thinking_signature
from openfusion.errors import InvalidRequest, UpstreamTimeout
from openfusion.pipeline.events import PanelStarted, RunFinished, SynthesisChunk, SynthesisMessage
from openfusion.protocol import Usage


def chat_of(**body: Any) -> dict[str, Any]:
    data = {"model": "fake/m", "max_tokens": 100, **body}
    return translate(parse_request(data), data).body


def refusal(**body: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as refused:
        chat_of(**body)
    return refused.value


def test_system_blocks_and_a_system_turn_become_system_messages() -> None:
    body = chat_of(
        system=[{"type": "text", "text": "One."}, {"type": "text", "text": "Two.", "cache_control": {"x": 1}}],
        messages=[{"role": "user", "content": "Hi"}, {"role": "system", "content": [{"type": "text", "text": "Env."}]}],
    )
    assert body["messages"] == [
        {"role": "system", "content": "One.\n\nTwo."},
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Env."},
    ]


def test_tool_results_come_first_and_their_images_follow_as_the_users() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA="}}
    body = chat_of(
        messages=[
            {"role": "user", "content": "Shot?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "text", "text": "Taking it."},
                    {"type": "tool_use", "id": "t1", "name": "shot", "input": {"w": 2}},
                    {"type": "tool_use", "id": "t2", "name": "log", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "done"}, image]},
                    {"type": "tool_result", "tool_use_id": "t2", "content": "ok", "is_error": True},
                    {"type": "text", "text": "Describe it."},
                ],
            },
        ]
    )
    assert body["messages"][1:] == [
        {"role": "assistant", "content": "Taking it.", "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "shot", "arguments": '{"w":2}'}},
            {"id": "t2", "type": "function", "function": {"name": "log", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "t1", "content": "done"},
        {"role": "tool", "tool_call_id": "t2", "content": "Error: ok"},  # is_error: said in the text
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA="}},
            {"type": "text", "text": "Describe it."},
        ]},
    ]  # fmt: skip


def test_documents_and_search_results() -> None:
    pdf = {"type": "document", "title": "a.pdf", "source": {"type": "base64", "media_type": "application/pdf",
                                                             "data": "JVBE"}}  # fmt: skip
    text = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Plain."}}
    found = {"type": "search_result", "title": "T", "source": "u", "content": [{"type": "text", "text": "S."}]}
    said = {"type": "document", "source": {"type": "content", "content": "As a string."}}  # Anthropic takes one
    body = chat_of(messages=[{"role": "user", "content": [pdf, text, found, said]}])
    assert body["messages"][0]["content"] == [
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"}},
        {"type": "text", "text": "Plain."},
        {"type": "text", "text": "T\nS."},
        {"type": "text", "text": "As a string."},
    ]


def test_tools_and_tool_choice() -> None:
    tools = [
        {"name": "get", "description": "Get.", "input_schema": {"type": "object"}, "cache_control": {"x": 1}},
        {"type": "bash_20250124", "name": "bash"},  # Anthropic's own: no schema to offer a chat model
        {"name": "later", "input_schema": {"type": "object"}, "defer_loading": True},
        {"type": "openrouter:fusion", "parameters": {"preset": "trio"}},
    ]
    body = chat_of(messages=[{"role": "user", "content": "Hi"}], tools=tools,
                   tool_choice={"type": "tool", "name": "get", "disable_parallel_tool_use": True})  # fmt: skip
    assert body["tools"] == [
        {"type": "function", "function": {"name": "get", "parameters": {"type": "object"}, "description": "Get."}},
        {"type": "openrouter:fusion", "parameters": {"preset": "trio"}},
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get"}}
    assert body["parallel_tool_calls"] is False
    hi = [{"role": "user", "content": "Hi"}]
    assert chat_of(messages=hi, tools=tools[:1], tool_choice={"type": "any"})["tool_choice"] == "required"
    # No tool left to offer: neither tools nor a tool_choice naming one goes to the chat model.
    assert not {"tools", "tool_choice"} & set(chat_of(messages=hi, tools=tools[1:2], tool_choice={"type": "any"}))


def test_sampling_and_the_fields_openfusion_ignores() -> None:
    body = chat_of(
        messages=[{"role": "user", "content": "Hi"}],
        stop_sequences=["\n\nHuman:"],
        top_p=0.9,
        top_k=3,
        metadata={"user_id": "u1"},
        max_tokens=4000,
        thinking={"type": "enabled", "budget_tokens": 1500},
        output_config={"effort": "high"},
        context_management={"edits": []},
        service_tier="auto",
    )
    assert {k: body[k] for k in ("stop", "top_p", "top_k", "user", "max_completion_tokens", "reasoning")} == {
        "stop": ["\n\nHuman:"], "top_p": 0.9, "top_k": 3, "user": "u1", "max_completion_tokens": 4000,
        "reasoning": {"effort": "medium"},
    }  # fmt: skip
    assert "output_config" not in body and "context_management" not in body and "service_tier" not in body
    assert "reasoning" not in chat_of(messages=[{"role": "user", "content": "Hi"}], thinking={"type": "adaptive"})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages[0].content[0].type"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]},
            "messages[0].content[0].tool_use_id",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "a\nb", "name": "f"}]}]},
            "messages[0].content[0].id",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}
                ]
            },
            "messages[0].content[0].source",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"name": "f"}]}, "tools[0].input_schema"),
        ({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "maybe"}}, "tool_choice.type"),
        (
            {"messages": [{"role": "user", "content": "x"}], "stop_sequences": ["a", "b", "c", "d", "e"]},
            "stop_sequences",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 1.5}, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "thinking": {"type": "sometimes"}}, "thinking.type"),
        ({"messages": []}, "messages"),
    ],
)
def test_bad_input_names_the_parameter(body: dict[str, Any], param: str) -> None:
    assert refusal(**body).param == param


def writer(**body: Any) -> MessageWriter:
    data = {"model": "fusion/x", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}], **body}
    return MessageWriter(request=parse_request(data), model="fusion/x", input_tokens=9)


def chunk(delta: dict[str, Any], finish: str | None = None, **choice: Any) -> SynthesisChunk:
    return SynthesisChunk({"choices": [{"index": 0, "delta": delta, "finish_reason": finish, **choice}]})


def run(w: MessageWriter, *events: Any) -> list[dict[str, Any]]:
    out = w.start()
    for event in events:
        out += w.render(event)
    return out


USAGE = Usage(prompt_tokens=30, completion_tokens=5, total_tokens=35, prompt_tokens_details={"cached_tokens": 10})
FINISHED = RunFinished(model="synth", usage=USAGE, fusion={"preset": "x"})


def test_interleaved_tool_call_pieces_arrive_whole() -> None:
    w = writer()
    calls = [
        chunk({"content": "Hi. "}),
        chunk({"tool_calls": [{"index": 0, "id": "c0", "function": {"name": "a", "arguments": '{"x":'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "c1", "function": {"name": "b", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}, "tool_calls"),  # a late piece
    ]
    events = run(w, PanelStarted(["m"]), *calls, FINISHED)

    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert [e["delta"]["partial_json"] for e in events if e.get("delta", {}).get("type") == "input_json_delta"] == [
        '{"x":1}',
        "{}",
    ]
    message = w.snapshot()
    assert [b["type"] for b in message["content"]] == ["text", "tool_use", "tool_use"]
    assert message["content"][1] == {"type": "tool_use", "id": "c0", "name": "a", "input": {"x": 1}}
    assert message["stop_reason"] == "tool_use" and message["fusion"] == {"preset": "x"}
    # Anthropic counts cache reads apart from input_tokens.
    assert message["usage"] == {"input_tokens": 20, "output_tokens": 5, "cache_creation_input_tokens": 0,
                                "cache_read_input_tokens": 10}  # fmt: skip
    assert events[0]["message"]["usage"]["input_tokens"] == 9  # the estimate, before anything was counted


@pytest.mark.parametrize(
    ("finish", "extra", "reason", "sequence"),
    [
        ("length", {}, "max_tokens", None),
        ("content_filter", {}, "refusal", None),
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),
        ("stop", {"stop_reason": "other"}, "end_turn", None),
    ],
)
def test_stop_reasons(finish: str, extra: dict[str, Any], reason: str, sequence: str | None) -> None:
    w = writer(stop_sequences=["END"])
    events = run(w, chunk({"content": "x"}, finish, **extra), RunFinished(model="m", usage=Usage(), fusion={}))
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["delta"] == {"stop_reason": reason, "stop_sequence": sequence}
    assert delta["usage"]["input_tokens"] == 9  # no usage reported: the estimate stands


def test_a_whole_message_with_reasoning_shown_or_not() -> None:
    message = SynthesisMessage({"role": "assistant", "reasoning": "Think.", "content": "Say."}, "stop")
    shown = run(writer(max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024}), message, FINISHED)
    hidden = run(writer(), message, FINISHED)
    assert [e["content_block"] for e in shown if e["type"] == "content_block_start"] == [
        {"type": "thinking", "thinking": "", "signature": ""},
        {"type": "text", "text": ""},
    ]
    signature = thinking_signature("Think.")
    assert [e["delta"] for e in shown if e["type"] == "content_block_delta"] == [
        {"type": "thinking_delta", "thinking": "Think."},
        {"type": "signature_delta", "signature": signature},
        {"type": "text_delta", "text": "Say."},
    ]
    assert [e["index"] for e in hidden if e["type"] == "content_block_start"] == [0]


def test_a_thinking_block_is_signed_in_the_stream_and_the_message() -> None:
    w = writer(max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024})
    events = run(w, chunk({"reasoning": "Hm, "}), chunk({"reasoning": "blue."}), chunk({"content": "Blue."}, "stop"),
                 FINISHED)  # fmt: skip
    kinds = [(e["type"], e.get("delta", {}).get("type")) for e in events if e["type"].startswith("content_block")]
    assert kinds == [
        ("content_block_start", None), ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "thinking_delta"), ("content_block_delta", "signature_delta"),
        ("content_block_stop", None),
        ("content_block_start", None), ("content_block_delta", "text_delta"), ("content_block_stop", None),
    ]  # fmt: skip
    assert w.snapshot()["content"][0] == {"type": "thinking", "thinking": "Hm, blue.",
                                          "signature": thinking_signature("Hm, blue.")}  # fmt: skip
    assert thinking_signature("Hm, blue.").startswith(SIGNATURE_PREFIX)
    assert thinking_signature("Hm, blue.") != thinking_signature("Hm, red.")


def test_a_failure_is_an_error_event() -> None:
    w = writer()
    error = UpstreamTimeout("slow", model="m", provider="p")
    assert w.fail(error) == [{"type": "error", "error": {"type": "timeout_error", "message": "slow"}}]


def test_the_token_estimate() -> None:
    short = parse_request({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]})
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 100_000}}
    pictured = parse_request({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [image]}]})
    long = parse_request({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x" * 4000}]})
    assert 0 < estimate_input_tokens(short) < 20
    assert 1000 <= estimate_input_tokens(long) < 1030
    assert 1600 < estimate_input_tokens(pictured) < 1650  # the image counts 1,600, not its base64 length


def test_a_document_by_file_id_counts_as_a_fetched_document_in_the_worst_case() -> None:
    """Forwarded to a provider that speaks Messages, a document given by file id (a PDF of many pages) is read at the
    provider; the chat form the worst case prices says so, rather than `[file document]`'s few characters."""
    from openfusion.api.messages.conversation import chat_messages
    from openfusion.pipeline.budget import URL_MEDIA_TOKENS, prompt_tokens_upper_bound
    from openfusion.protocol import ChatRequest

    document = {"type": "document", "source": {"type": "file", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"}}
    messages, _ = chat_messages(None, [{"role": "user", "content": [document, {"type": "text", "text": "Sum up."}]}],
                             lenient=True)  # fmt: skip
    assert messages[0]["content"][0] == {"type": "file", "file": {"file_id": "file_011CNha8iCJcU1wXNR6q4V8w"}}
    assert prompt_tokens_upper_bound(ChatRequest(model="claude/opus", messages=messages)) > URL_MEDIA_TOKENS
