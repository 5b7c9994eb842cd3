"""The Anthropic Messages API through the real server: the official `anthropic` SDK (create, stream, tools)."""

from __future__ import annotations

import time
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from fakes.upstream import FakeUpstream, Script

from .test_activity_wiring import generation
from .test_fusion import DETAILED, detailed_usage

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
PLUGIN = {"id": "fusion", "preset": "trio", "model": "fake/judge", "synthesis_model": "fake/synth"}
CALL = {"id": "call_w1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


def sdk(url: str, **options: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="sk-client-key", max_retries=0, **options)


def test_a_fused_answer_through_messages_create(upstream: FakeUpstream, server: str) -> None:
    upstream.script("synth", Script(content="Rayleigh scattering.", cost=0.5))

    with sdk(server) as client:
        raw = client.messages.with_raw_response.create(
            model="fusion/trio",
            max_tokens=500,
            system="Answer briefly.",
            messages=[{"role": "user", "content": "Why is the sky blue?"}],
        )
    message = raw.parse()

    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Rayleigh scattering."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    # The run's usage: three panelists, the judge and the synthesizer (11 + 7 tokens each).
    assert (message.usage.input_tokens, message.usage.output_tokens) == (55, 35)
    assert message.usage.cache_read_input_tokens == 0
    assert raw.headers["x-generation-id"].startswith("gen-")
    fusion = (message.model_extra or {})["fusion"]
    assert fusion["preset"] == "trio" and fusion["judge"]["status"] == "ok"
    assert [entry["model"] for entry in fusion["panel"]] == ["fake/a", "fake/b", "fake/c"]
    # Each panelist saw the system prompt and the question; the synthesizer was held to max_tokens.
    assert upstream.calls_for("a")[0].body["messages"][-1] == {"role": "user", "content": "Why is the sky blue?"}
    synth = upstream.calls_for("synth")[0].body
    assert synth["max_completion_tokens"] == 500
    assert synth["messages"][0]["role"] == "system" and "Answer briefly." in synth["messages"][0]["content"]


def test_a_fused_answer_through_messages_stream(upstream: FakeUpstream, server: str) -> None:
    upstream.script("synth", Script(chunks=["Rayleigh ", "scattering."]))

    with (
        sdk(server) as client,
        client.messages.stream(
            model="fusion/trio", max_tokens=100, messages=[{"role": "user", "content": "Why is the sky blue?"}]
        ) as stream,
    ):
        texts = list(stream.text_stream)
        final = stream.get_final_message()

    assert texts == ["Rayleigh ", "scattering."]
    assert [block.type for block in final.content] == ["text"]
    assert final.content[0].text == "Rayleigh scattering."  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (55, 35)


@pytest.mark.parametrize("model", ["fusion/trio", "fake/solo"])
def test_a_tool_use_round_trip(upstream: FakeUpstream, server: str, model: str) -> None:
    answerer = "synth" if model == "fusion/trio" else "solo"
    upstream.script(answerer, Script(content="Let me check.", tool_calls=[CALL]), Script(content="Sunny in Paris."))
    question = {"role": "user", "content": "Weather in Paris?"}

    with sdk(server) as client:
        first = client.messages.create(model=model, max_tokens=200, tools=[WEATHER], messages=[question])
        assert first.stop_reason == "tool_use"
        assert [block.type for block in first.content] == ["text", "tool_use"]
        use = first.content[1]
        assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
        result = {"type": "tool_result", "tool_use_id": use.id, "content": "22 C, sunny"}
        second = client.messages.create(
            model=model,
            max_tokens=200,
            tools=[WEATHER],
            messages=[question, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}],
        )

    assert second.content[0].text == "Sunny in Paris."  # type: ignore[union-attr]
    assert second.stop_reason == "end_turn"
    offered = upstream.calls_for(answerer)[0].body["tools"]
    assert offered == [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                          "parameters": WEATHER["input_schema"]}}]  # fmt: skip
    conversation = upstream.calls_for(answerer)[1].body["messages"]
    assistant = next(m for m in conversation if m["role"] == "assistant")
    assert assistant["content"] == "Let me check."
    function = {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert assistant["tool_calls"] == [{"id": use.id, "type": "function", "function": function}]
    assert {"role": "tool", "tool_call_id": use.id, "content": "22 C, sunny"} in conversation


@pytest.mark.parametrize("model", ["fusion/trio", "fake/solo"])
def test_a_streamed_tool_use(upstream: FakeUpstream, server: str, model: str) -> None:
    upstream.script("synth" if model == "fusion/trio" else "solo", Script(tool_calls=[CALL]))

    with (
        sdk(server) as client,
        client.messages.stream(
            model=model, max_tokens=200, tools=[WEATHER], messages=[{"role": "user", "content": "Weather in Paris?"}]
        ) as stream,
    ):
        kinds = [event.type for event in stream]
        final = stream.get_final_message()

    assert final.stop_reason == "tool_use"
    assert [(b.type, b.id, b.name, b.input) for b in final.content] == [  # type: ignore[union-attr]
        ("tool_use", "call_w1", "get_weather", {"city": "Paris"})
    ]
    assert "input_json" in kinds and kinds[-1] == "message_stop"


def gemini_tool_calls() -> bytes:
    """A chat stream as Gemini's OpenAI-compatible endpoint sends parallel calls: each whole, one per chunk, and
    none with an `index`."""
    chunks = [
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                              "function": {"name": "get_weather", "arguments": '{"city":"London"}'}}]},
        {"tool_calls": [{"id": "call_2", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
    ]  # fmt: skip
    return chat_stream(*chunks, finish="tool_calls")


def chat_stream(*deltas: dict[str, Any], finish: str) -> bytes:
    """A raw chat-completions stream: a chunk per delta, one with `finish`, then `[DONE]`."""
    body = b""
    for delta, reason in [*((d, None) for d in deltas), ({}, finish)]:
        chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}  # fmt: skip
        body += b"data: " + orjson.dumps(chunk) + b"\n\n"
    return body + b"data: [DONE]\n\n"


REFUSAL = "I can't help with that."


def refusal(*, streamed: bool) -> bytes:
    """A chat answer that is OpenAI's `refusal` (content null), as a stream of two pieces or a whole completion."""
    if not streamed:
        message = {"role": "assistant", "content": None, "refusal": REFUSAL}
        return orjson.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                             "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}})  # fmt: skip
    return chat_stream({"role": "assistant", "refusal": "I can't "}, {"refusal": "help with that."}, finish="stop")


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize("model", ["fusion/trio", "fake/solo"])
def test_a_refusal_is_a_text_block_that_stops_with_refusal(
    upstream: FakeUpstream, server: str, model: str, stream: bool
) -> None:
    # The synthesizer, like a pass-through, is streamed from its provider only when the client streams.
    upstream.script(
        "synth" if model == "fusion/trio" else "solo",
        Script(raw_body=refusal(streamed=stream)),
    )
    question = [{"role": "user", "content": "Something harmful."}]

    with sdk(server) as client:
        if stream:
            with client.messages.stream(model=model, max_tokens=100, messages=question) as events:  # type: ignore[arg-type]
                message = events.get_final_message()
        else:
            message = client.messages.create(model=model, max_tokens=100, messages=question)  # type: ignore[arg-type]

    assert [(block.type, block.text) for block in message.content] == [("text", REFUSAL)]  # type: ignore[union-attr]
    assert message.stop_reason == "refusal"


def test_a_stream_whose_provider_reports_no_usage_counts_estimates(upstream: FakeUpstream, server: str) -> None:
    """A llama.cpp server's streams carry no usage: the message's counts are estimates, not zeros after text."""
    upstream.script("solo", Script(chunks=["The answer ", "is forty-two, as computed."], stream_usage=False))

    with (
        sdk(server) as client,
        client.messages.stream(model="fake/solo", max_tokens=100, messages=[{"role": "user", "content": "Q?"}]) as s,
    ):
        message = s.get_final_message()

    assert message.content[0].text == "The answer is forty-two, as computed."  # type: ignore[union-attr]
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens == 10  # its 37 characters, a token per four


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_a_fusions_cache_reads_are_the_sum_of_its_calls(upstream: FakeUpstream, server: str, stream: bool) -> None:
    """Five calls that each read 40 of their 100 input tokens from a cache: 200 read, 300 not; whichever chunk the
    synthesizer reported its usage on (some providers put it on the one that finishes the answer)."""
    detailed_usage(upstream)
    upstream.script("synth", Script(chunks=["one ", "two"], usage=DETAILED, usage_on_finish=True))
    question = [{"role": "user", "content": "Why?"}]

    with sdk(server) as client:
        if stream:
            with client.messages.stream(model="fusion/trio", max_tokens=100, messages=question) as events:  # type: ignore[arg-type]
                message = events.get_final_message()
        else:
            message = client.messages.create(model="fusion/trio", max_tokens=100, messages=question)  # type: ignore[arg-type]

    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (300, 200, 250)


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_tokens_written_to_a_cache_are_cache_creation_tokens(upstream: FakeUpstream, server: str, stream: bool) -> None:
    """OpenRouter counts the prompt tokens a provider wrote to its cache as `cache_write_tokens`, within
    prompt_tokens; Anthropic's usage counts them apart from input_tokens, as cache reads are."""
    details = {"cached_tokens": 40, "cache_write_tokens": 30}
    usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120, "prompt_tokens_details": details}
    upstream.script("solo", Script(chunks=["Hi ", "there."], usage=usage))
    question = [{"role": "user", "content": "Hi"}]

    with sdk(server) as client:
        if stream:
            with client.messages.stream(model="fake/solo", max_tokens=100, messages=question) as events:  # type: ignore[arg-type]
                message = events.get_final_message()
        else:
            message = client.messages.create(model="fake/solo", max_tokens=100, messages=question)  # type: ignore[arg-type]

    counts = message.usage
    assert (counts.input_tokens, counts.cache_creation_input_tokens, counts.cache_read_input_tokens) == (30, 30, 40)
    assert counts.output_tokens == 20


def test_text_between_a_calls_arguments_leaves_the_call_whole(upstream: FakeUpstream, server: str) -> None:
    """A stream that writes text while a call's arguments are still coming: the call keeps all of them."""
    deltas = [
        {"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                              "function": {"name": "get_weather", "arguments": '{"ci'}}]},
        {"content": "Checking."},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"London"}'}}]},
    ]  # fmt: skip
    upstream.script("solo", Script(raw_body=chat_stream(*deltas, finish="tool_calls")))

    with (
        sdk(server) as client,
        client.messages.stream(
            model="fake/solo", max_tokens=200, tools=[WEATHER], messages=[{"role": "user", "content": "London?"}]
        ) as stream,
    ):
        final = stream.get_final_message()

    assert [(b.type, getattr(b, "text", None), getattr(b, "input", None)) for b in final.content] == [
        ("text", "Checking.", None),
        ("tool_use", None, {"city": "London"}),
    ]


@pytest.mark.parametrize("model", ["fusion/trio", "fake/solo"])
def test_streamed_parallel_calls_without_an_index_stay_apart(upstream: FakeUpstream, server: str, model: str) -> None:
    upstream.script("synth" if model == "fusion/trio" else "solo", Script(raw_body=gemini_tool_calls()))

    with (
        sdk(server) as client,
        client.messages.stream(
            model=model, max_tokens=200, tools=[WEATHER], messages=[{"role": "user", "content": "London and Oslo?"}]
        ) as stream,
    ):
        final = stream.get_final_message()

    assert final.stop_reason == "tool_use"
    assert [(b.type, b.id, b.input) for b in final.content] == [  # type: ignore[union-attr]
        ("tool_use", "call_1", {"city": "London"}),
        ("tool_use", "call_2", {"city": "Oslo"}),
    ]


def test_a_pass_through_whose_tools_all_run_elsewhere_sends_the_provider_no_tools(
    upstream: FakeUpstream, server: str
) -> None:
    """Anthropic's own web search tool is no tool a chat model is offered: an empty `tools` is refused by some
    providers, and `tool_choice` or `parallel_tool_calls` without tools by OpenAI."""
    search = {"type": "web_search_20250305", "name": "web_search"}
    with sdk(server) as client:
        message = client.messages.create(
            model="fake/solo", max_tokens=100, messages=[{"role": "user", "content": "News?"}], tools=[search],
            tool_choice={"type": "tool", "name": "web_search", "disable_parallel_tool_use": True},
        )  # type: ignore[call-overload]  # fmt: skip

    assert message.stop_reason == "end_turn"
    sent = upstream.calls_for("solo")[0].body
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(sent)


def test_pass_through_is_translated_for_a_chat_provider(upstream: FakeUpstream, server: str) -> None:
    upstream.script("solo", Script(chunks=["Hello", " there."], usage={"prompt_tokens": 9, "completion_tokens": 2,
                                                                       "total_tokens": 11}))  # fmt: skip

    with sdk(server) as client:
        whole = client.messages.create(
            model="fake/solo",
            max_tokens=64,
            system=[{"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}],
            messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            stop_sequences=["END"],
            metadata={"user_id": "user-7"},
            extra_body={"temperature": 0.2, "top_k": 5},  # sampling fields this SDK no longer types
        )
        with client.messages.stream(
            model="fake/solo", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            streamed = stream.get_final_message()

    assert whole.content[0].text == streamed.content[0].text == "Hello there."  # type: ignore[union-attr]
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (9, 2)
    assert (streamed.usage.input_tokens, streamed.usage.output_tokens) == (9, 2)
    assert whole.model == streamed.model == "fake/solo"  # the answering model's slug, streamed or not
    sent = upstream.calls_for("solo")[0].body
    assert sent["messages"] == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    assert (sent["stop"], sent["temperature"], sent["top_k"], sent["user"]) == (["END"], 0.2, 5, "user-7")
    assert sent["max_completion_tokens"] == 64
    assert "plugins" not in sent and "models" not in sent


def test_fusion_through_the_plugins_field(upstream: FakeUpstream, server: str) -> None:
    upstream.script("synth", Script(content="Fused."))

    with sdk(server) as client:
        message = client.messages.create(
            model="fake/solo",
            max_tokens=100,
            messages=[{"role": "user", "content": "Why?"}],
            extra_body={"plugins": [PLUGIN]},
        )

    assert message.content[0].text == "Fused."  # type: ignore[union-attr]
    assert {c.model for c in upstream.calls} == {"a", "b", "c", "judge", "synth"}


def test_images_and_thinking(upstream: FakeUpstream, server: str) -> None:
    upstream.script("solo", Script(content="A red dot."))
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    linked = {"type": "image", "source": {"type": "url", "url": "https://example.com/dot.png"}}

    with sdk(server) as client:
        client.messages.create(
            model="fake/solo",
            max_tokens=2000,
            thinking={"type": "enabled", "budget_tokens": 1500},
            messages=[{"role": "user", "content": [image, linked, {"type": "text", "text": "What is it?"}]}],
        )
        fused = client.messages.create(
            model="fusion/trio",
            max_tokens=4096,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[{"role": "user", "content": "What is it?"}],
        )

    sent = upstream.calls_for("solo")[0].body
    assert sent["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/dot.png"}},
        {"type": "text", "text": "What is it?"},
    ]
    assert sent["reasoning_effort"] == "high"  # the fake provider's reasoning style
    assert fused.stop_reason == "end_turn"
    assert upstream.calls_for("synth")[0].body["reasoning_effort"] == "low"


def test_count_tokens(upstream: FakeUpstream, server: str) -> None:
    with sdk(server) as client:
        short = client.messages.count_tokens(model="fusion/trio", messages=[{"role": "user", "content": "Hi"}])
        long = client.messages.count_tokens(
            model="fake/solo", system="x" * 4000, tools=[WEATHER], messages=[{"role": "user", "content": "Hi"}]
        )
        with pytest.raises(anthropic.NotFoundError) as missing:
            client.messages.count_tokens(model="fusion/nope", messages=[{"role": "user", "content": "Hi"}])
        # Thinking, as Claude Code counts with it on: count_tokens takes no max_tokens to be above its budget.
        thinking = client.messages.count_tokens(
            model="fusion/trio",
            thinking={"type": "enabled", "budget_tokens": 16000},
            messages=[{"role": "user", "content": "Hi"}],
        )

    assert 0 < short.input_tokens < 50 and thinking.input_tokens == short.input_tokens
    assert 1000 < long.input_tokens < 1200  # ~4 characters a token
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert upstream.calls == []  # counting calls no model


def test_activity_records_the_surface(upstream: FakeUpstream, start_server: Any, tmp_path: Any) -> None:
    with start_server(activity={"path": tmp_path / "activity.sqlite3"}) as url:
        with sdk(url) as client:
            raw = client.messages.with_raw_response.create(
                model="fusion/trio", max_tokens=100, messages=[{"role": "user", "content": "Why?"}]
            )
        record = generation(url, raw.headers["x-generation-id"])

    assert record["api_type"] == "messages" and record["preset"] == "trio" and record["status"] == "ok"
    assert len(record["calls"]) == 5


def test_refused_requests_are_recorded_on_this_surface(
    upstream: FakeUpstream, start_server: Any, tmp_path: Any
) -> None:
    with start_server(activity={"path": tmp_path / "activity.sqlite3"}) as url, sdk(url) as client:
        with pytest.raises(anthropic.BadRequestError):  # refused while parsing: no max_tokens
            client.post("/v1/messages", cast_to=object, body={"model": "fake/solo", "messages": [], "stream": True})
        with pytest.raises(anthropic.NotFoundError):  # refused by the dispatcher: no such preset
            client.messages.create(model="fusion/nope", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
        deadline = time.monotonic() + 5
        while len(records := httpx.get(f"{url}/v1/activity").json()["data"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)

    assert [(r["requested_model"], r["failure_reason"], r["api_type"], r["streamed"]) for r in records] == [
        ("fusion/nope", "model_not_found", "messages", False),
        ("fake/solo", "invalid_request", "messages", True),
    ]
    assert upstream.calls == []
