"""Pass-through to a provider that speaks Anthropic Messages natively: the request forwarded as sent, headers intact."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import pytest

from fakes.anthropic_api import MALFORMED, USAGE, FakeAnthropic, Reply
from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, wait_until
from openfusion.api import completion_events
from openfusion.app import create_app
from openfusion.settings import ProviderConfig, Settings

VERSION = "2023-06-01"  # the SDK's own default is newer: the client's choice is what must arrive
BETA = "claude-code-20250219,interleaved-thinking-2025-05-14"
QUESTION = [{"role": "user", "content": "Hi"}]
SCOPED_KEY = "sk-scoped-0c4e1b7f"  # a key whose scope is fake/* alone


@pytest.fixture
def gateway(
    upstream: FakeUpstream,
    anthropic_native: tuple[FakeAnthropic, str],
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> Iterator[str]:
    """openfusion with the chat fake and an Anthropic-native provider serving `claude/*`."""
    with serve_native(anthropic_native[1], make_settings, tmp_path) as url:
        yield url


@contextmanager
def serve_native(
    native_url: str, make_settings: Callable[..., Settings], tmp_path: Path, **overrides: Any
) -> Iterator[str]:
    """The `gateway` fixture's server, with settings `overrides`."""
    chat = make_settings().providers
    claude = ProviderConfig(name="claude", base_url=f"{native_url}/v1", api_key_env="CLAUDE_KEY",
                            models=["claude/*"], strip_prefix=True, messages=True)  # fmt: skip
    # OpenRouter's Messages endpoint (`reasoning_style = "openrouter"` says it is OpenRouter), on the same fake.
    router = ProviderConfig(name="router", base_url=f"{native_url}/v1", api_key_env="CLAUDE_KEY",
                            models=["router/*"], strip_prefix=True, messages=True,
                            reasoning_style="openrouter")  # fmt: skip
    settings = make_settings(providers=[*chat, claude, router], activity={"path": tmp_path / "activity.sqlite3"},
                             keys=[{"name": "cc", "key_env": "CLIENT_KEY"},
                                   {"name": "scoped", "key_env": "SCOPED_KEY", "models": ["fake/*"]}],
                             **overrides)  # fmt: skip
    environ = {"FAKE_KEY": "sk-provider-secret", "CLAUDE_KEY": "sk-ant-provider", "CLIENT_KEY": "sk-client-7d2e4f9a",
               "SCOPED_KEY": SCOPED_KEY}  # fmt: skip
    with serve_in_thread(create_app(settings, environ=environ)) as url:
        yield url


def generation(url: str, generation_id: str) -> dict[str, Any]:
    """The recorded generation (the writer batches off the hot path, so wait for it)."""
    found: list[dict[str, Any]] = []

    def recorded() -> bool:
        response = httpx.get(
            f"{url}/api/v1/generation", params={"id": generation_id}, headers={"x-api-key": "sk-client-7d2e4f9a"}
        )
        found[:] = [response.json()["data"]] if response.status_code == 200 else []
        return bool(found)

    wait_until(recorded, timeout=5)
    return found[0]


def sdk(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="sk-client-7d2e4f9a", max_retries=0,
                               default_headers={"anthropic-beta": BETA, "anthropic-version": VERSION})  # fmt: skip


def assert_forwarded(call: Any, *, stream: bool) -> None:
    """The provider got its own key as x-api-key, the client's Anthropic headers unchanged, the body as sent."""
    assert call.path == "/v1/messages"
    assert call.headers["x-api-key"] == "sk-ant-provider" and "authorization" not in call.headers
    assert call.headers["anthropic-version"] == VERSION and call.headers["anthropic-beta"] == BETA
    assert "sk-client-7d2e4f9a" not in json.dumps(call.headers)
    assert call.body["model"] == "opus" and call.body.get("stream", False) is stream
    # What openfusion does not translate reaches the provider untouched.
    assert call.body["context_management"] == {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}
    assert call.body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert "plugins" not in call.body


@pytest.mark.parametrize("stream", [False, True])
def test_a_native_provider_gets_the_request_as_sent(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str, stream: bool
) -> None:
    fake, _ = anthropic_native
    body: dict[str, Any] = {
        "model": "claude/opus",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": QUESTION,
        "extra_body": {"context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}},
    }
    with sdk(gateway) as client:
        if stream:
            with client.messages.stream(**body) as events:
                message = events.get_final_message()
            generation_id = events.response.headers["x-generation-id"]
        else:
            raw = client.messages.with_raw_response.create(**body)
            message, generation_id = raw.parse(), raw.headers["x-generation-id"]
        record = generation(gateway, generation_id)

    assert message.content[0].text == "Native answer." and message.id == "msg_native"  # type: ignore[union-attr]
    assert message.usage.input_tokens == USAGE["input_tokens"]
    assert_forwarded(fake.calls[0], stream=stream)
    assert upstream.calls == []  # nothing went through chat completions
    assert record["api_type"] == "messages" and record["status"] == "ok" and record["model"] == "opus"
    # The provider's usage, cache reads included, in the activity record.
    assert (record["tokens_prompt"], record["tokens_completion"]) == (24, 4)


# OpenRouter's own fields, which Anthropic refuses ("Extra inputs are not permitted") or might one day read otherwise.
OPENROUTER_ONLY: dict[str, Any] = {
    "provider": {"order": ["anthropic"], "allow_fallbacks": False}, "route": "fallback", "preset": "mine",
    "transforms": ["middle-out"], "usage": {"include": True}, "session_id": "conversation-1",
    "trace": {"trace_id": "t-1"}, "debug": {"echo_upstream_body": True}, "reasoning": {"effort": "high"},
    "plugins": [{"id": "web", "max_results": 3}],
}  # fmt: skip
# Anthropic's own, openfusion's translation aside: they reach it as sent.
ANTHROPICS_OWN: dict[str, Any] = {
    "top_k": 5, "stop_sequences": ["END"], "metadata": {"user_id": "u-1"}, "service_tier": "auto",
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
}  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
def test_a_native_provider_gets_none_of_openrouters_fields(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str, stream: bool
) -> None:
    fake, _ = anthropic_native
    body: dict[str, Any] = {"model": "claude/opus", "max_tokens": 100, "messages": QUESTION,
                            "extra_body": {**OPENROUTER_ONLY, **ANTHROPICS_OWN}}  # fmt: skip
    with sdk(gateway) as client:
        if stream:
            with client.messages.stream(**body) as events:
                message = events.get_final_message()
        else:
            message = client.messages.create(**body)

    assert message.content[0].text == "Native answer."  # type: ignore[union-attr]
    sent = fake.calls[0].body
    assert sent == {"model": "opus", "max_tokens": 100, "messages": QUESTION, **ANTHROPICS_OWN,
                    **({"stream": True} if stream else {})}  # fmt: skip


def test_openrouters_fields_go_to_openrouter_alone_a_fallback_included(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    """The first provider (Anthropic) gets the body without them and fails; the fallback, OpenRouter, gets them."""
    fake, _ = anthropic_native
    fake.replies = [Reply(status=400), Reply()]
    fusion_off = {"id": "fusion", "enabled": False}  # openfusion's own plugin: neither provider's business
    extra = {**OPENROUTER_ONLY, "plugins": [*OPENROUTER_ONLY["plugins"], fusion_off], "models": ["router/opus"]}
    with sdk(gateway) as client:
        message = client.messages.create(model="claude/opus", max_tokens=100, messages=QUESTION, extra_body=extra)

    assert message.content[0].text == "Native answer."  # type: ignore[union-attr]
    to_anthropic, to_openrouter = (call.body for call in fake.calls)
    assert to_anthropic == {"model": "opus", "max_tokens": 100, "messages": QUESTION}
    assert to_openrouter == {"model": "opus", "max_tokens": 100, "messages": QUESTION, **OPENROUTER_ONLY}


@pytest.mark.parametrize("reply", [Reply(cut_after=3), Reply(end_after=3)], ids=["connection cut", "clean close"])
def test_a_native_stream_cut_short_ends_with_an_error_event(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str, reply: Reply
) -> None:
    fake, _ = anthropic_native
    fake.replies = [reply]
    body = {"model": "claude/opus", "max_tokens": 10, "messages": QUESTION, "stream": True}

    client_key = {"x-api-key": "sk-client-7d2e4f9a"}
    with httpx.stream("POST", f"{gateway}/v1/messages", json=body, headers=client_key) as response:
        lines = [line for line in response.iter_lines() if line]

    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    # A cut may swallow the events read with it (the transport drops a broken read): the end is what counts.
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "api_error"
    assert "event: message_stop" not in lines
    assert lines[-2] == "event: error"
    wait_until(lambda: len(fake.calls) == 1)


def test_a_native_stream_the_provider_ends_with_an_error_event_is_recorded_as_failed(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    fake, _ = anthropic_native
    fake.replies = [Reply(error_after=4)]
    body = {"model": "claude/opus", "max_tokens": 10, "messages": QUESTION, "stream": True}

    client_key = {"x-api-key": "sk-client-7d2e4f9a"}
    with httpx.stream("POST", f"{gateway}/v1/messages", json=body, headers=client_key) as response:
        lines = [line for line in response.iter_lines() if line]
        generation_id = response.headers["x-generation-id"]

    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    # The provider's own error event reaches the client as it sent it, and ends the stream.
    assert events[-1] == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded mid-stream"}}
    record = generation(gateway, generation_id)
    assert record["status"] == "error" and record["failure_reason"] == "upstream_error", record
    assert "Overloaded mid-stream" in json.dumps(record)


def test_a_native_stream_whose_events_name_their_type_last_is_read_whole(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    """A server that writes its events' fields in another order than Anthropic (the anthropic SDK's own models, in
    alphabetical order: `type` last, or amid a `message_delta`): its `message_stop` still ends the stream, not an
    error event added after a whole answer (the request recorded failed), and its usage is still read."""
    fake, _ = anthropic_native
    fake.replies = [Reply(type_last=True)]
    body: dict[str, Any] = {"model": "claude/opus", "max_tokens": 10, "messages": QUESTION}

    with sdk(gateway) as client, client.messages.stream(**body) as stream:
        message = stream.get_final_message()
        generation_id = stream.response.headers["x-generation-id"]
    headers = {"x-api-key": "sk-client-7d2e4f9a"}
    with httpx.stream("POST", f"{gateway}/v1/messages", json={**body, "stream": True}, headers=headers) as raw:
        lines = [line for line in raw.iter_lines() if line]

    assert message.content[0].text == "Native answer." and message.stop_reason == "end_turn"  # type: ignore[union-attr]
    assert lines[-2:] == ["event: message_stop", lines[-1]] and "event: error" not in lines
    record = generation(gateway, generation_id)
    assert record["status"] == "ok", record
    assert (record["tokens_prompt"], record["tokens_completion"]) == (24, 4), record
    assert record["model"] == "opus", record


def test_a_native_error_event_that_names_its_type_last_ends_the_stream_as_sent(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    fake, _ = anthropic_native
    fake.replies = [Reply(error_after=4, type_last=True)]
    body = {"model": "claude/opus", "max_tokens": 10, "messages": QUESTION, "stream": True}

    with httpx.stream(
        "POST", f"{gateway}/v1/messages", json=body, headers={"x-api-key": "sk-client-7d2e4f9a"}
    ) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
        generation_id = response.headers["x-generation-id"]

    # The provider's own error event ends the stream: no second one saying it ended before message_stop.
    assert events[-1]["type"] == "error" and events[-1]["error"]["message"] == "Overloaded mid-stream"
    assert [event["type"] for event in events].count("error") == 1
    record = generation(gateway, generation_id)
    assert record["status"] == "error" and "Overloaded mid-stream" in json.dumps(record), record
    assert "before message_stop" not in json.dumps(record)


def test_a_native_stream_cut_after_it_began_has_an_unknown_usage(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    """`message_start`'s output count (1) is a placeholder: what the provider generated before the stream broke off
    is unknown, and a spend cap counts the request's estimate, not a token's worth."""
    fake, _ = anthropic_native
    fake.replies = [Reply(cut_after=4)]  # message_start, a block's start, a ping, its first words: then the cut
    body = {"model": "claude/opus", "max_tokens": 10, "messages": QUESTION, "stream": True}

    with httpx.stream(
        "POST", f"{gateway}/v1/messages", json=body, headers={"x-api-key": "sk-client-7d2e4f9a"}
    ) as response:
        lines = [line for line in response.iter_lines() if line]
        generation_id = response.headers["x-generation-id"]

    assert lines[-2] == "event: error"
    record = generation(gateway, generation_id)
    assert record["status"] == "error"
    assert (record["usage"], record["total_cost"], record["tokens_completion"]) == (None, None, 0), record
    [call] = record["calls"]
    assert call["status"] == "error", call


def test_a_native_error_is_relayed_as_the_provider_sent_it(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    fake, _ = anthropic_native
    fake.replies = [Reply(status=529)]

    with sdk(gateway) as client, pytest.raises(anthropic.APIStatusError) as failed:
        client.messages.create(model="claude/opus", max_tokens=10, messages=QUESTION)  # type: ignore[arg-type]

    assert failed.value.status_code == 529 and failed.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert len(fake.calls) == 3  # retried by the one policy, then relayed


def test_count_tokens_comes_from_a_native_provider(anthropic_native: tuple[FakeAnthropic, str], gateway: str) -> None:
    fake, _ = anthropic_native
    with sdk(gateway) as client:
        counted = client.messages.count_tokens(model="claude/opus", messages=QUESTION)  # type: ignore[arg-type]

    assert counted.input_tokens == 1234
    call = fake.calls[0]
    assert call.path == "/v1/messages/count_tokens" and call.headers["x-api-key"] == "sk-ant-provider"
    assert call.headers["anthropic-beta"] == BETA and call.body["model"] == "opus"


def test_count_tokens_sends_a_native_provider_only_what_its_count_takes(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    """Anthropic's count_tokens refuses fields it does not take (`max_tokens`, sampling, `stream`), and OpenRouter's
    own (`provider`, `transforms`, `usage`, `reasoning`) are for OpenRouter alone: neither reaches the provider."""
    fake, _ = anthropic_native
    counted_fields = {
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "lookup", "description": "Look up", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto"},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    }
    foreign = {
        "max_tokens": 4096, "temperature": 0.2, "top_k": 5, "stop_sequences": ["END"], "stream": False,
        "metadata": {"user_id": "u-1"}, "service_tier": "auto",
        "provider": {"order": ["anthropic"]}, "transforms": ["middle-out"], "usage": {"include": True},
        "reasoning": {"effort": "high"}, "models": ["claude/sonnet"], "plugins": [{"id": "response-healing"}],
    }  # fmt: skip
    with sdk(gateway) as client:
        counted = client.messages.count_tokens(
            model="claude/opus",
            messages=QUESTION,
            extra_body={**counted_fields, **foreign},  # type: ignore[arg-type]
        )

    assert counted.input_tokens == 1234
    body = fake.calls[0].body
    assert body == {"model": "opus", "messages": QUESTION, **counted_fields}


# Valid Messages content no chat message can carry: a file id, a tool reference (tool search), a container upload.
UNTRANSLATABLE = [
    {"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"}},
        {"type": "text", "text": "What is in it?"},
    ]},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "tool_search", "input": {}}]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "tool_reference", "tool_name": "get"}]},
        {"type": "container_upload", "file_id": "file_022"},
    ]},
]  # fmt: skip


def test_content_no_chat_model_can_read_goes_to_a_native_provider_as_sent(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    fake, _ = anthropic_native
    with sdk(gateway) as client:
        message = client.messages.create(model="claude/opus", max_tokens=50, messages=UNTRANSLATABLE)  # type: ignore[arg-type]
        counted = client.messages.count_tokens(model="claude/opus", messages=UNTRANSLATABLE)  # type: ignore[arg-type]
        with pytest.raises(anthropic.BadRequestError) as refused:  # a chat model cannot be given it
            client.messages.create(model="fake/a", max_tokens=50, messages=UNTRANSLATABLE)  # type: ignore[arg-type]

    assert message.content and counted.input_tokens == 1234
    assert [call.body["messages"] for call in fake.calls] == [UNTRANSLATABLE, UNTRANSLATABLE]
    assert refused.value.body["error"]["message"].startswith("messages.0.content.0.source")  # type: ignore[index]


@pytest.mark.parametrize("model", ["claude/opus", "fusion/trio"])
def test_count_tokens_refuses_a_model_outside_the_keys_scope(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str, model: str
) -> None:
    """Counting spends nothing, but a native provider is asked with the operator's key: a key may count only what it
    may call, as on /v1/messages."""
    fake, _ = anthropic_native
    with anthropic.Anthropic(base_url=gateway, api_key=SCOPED_KEY, max_retries=0) as client:
        with pytest.raises(anthropic.PermissionDeniedError) as counting:
            client.messages.count_tokens(model=model, messages=QUESTION)  # type: ignore[arg-type]
        with pytest.raises(anthropic.PermissionDeniedError) as creating:
            client.messages.create(model=model, max_tokens=10, messages=QUESTION)  # type: ignore[arg-type]
        allowed = client.messages.count_tokens(model="fake/a", messages=QUESTION)  # type: ignore[arg-type]

    refused = {"type": "permission_error", "message": f"This API key (scoped) is not allowed to use '{model}'."}
    assert counting.value.status_code == 403 and counting.value.body == {"type": "error", "error": refused}
    assert creating.value.body == counting.value.body  # as on /v1/messages
    assert fake.calls == []  # the provider was never asked
    assert allowed.input_tokens > 0  # a model in scope is counted


def test_fallbacks_a_native_provider_cannot_take_are_translated(
    upstream: FakeUpstream, anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    fake, _ = anthropic_native
    with sdk(gateway) as client:
        message = client.messages.create(
            model="fake/solo",
            max_tokens=10,
            messages=QUESTION,
            extra_body={"models": ["claude/opus"]},  # type: ignore[arg-type]
        )

    assert message.content[0].text == "Answer from solo."  # type: ignore[union-attr]
    assert fake.calls == []


# ---- a provider that ignores `stream: true` and answers with one whole message ---------------------------------
WHOLE_USAGE = {"input_tokens": 30, "output_tokens": 12, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 0}
SEARCH_RESULT = {"type": "web_search_result", "url": "https://example.com/weather", "title": "Weather",
                 "encrypted_content": "EqgfCioIARgBIiQ", "page_age": None}  # fmt: skip
CITATION = {"type": "web_search_result_location", "url": "https://example.com/weather", "title": "Weather",
            "encrypted_index": "Eo8BCioIAhgBIiQ", "cited_text": "Mild in Paris."}  # fmt: skip
WHOLE_MESSAGE: dict[str, Any] = {
    "id": "msg_whole",
    "type": "message",
    "role": "assistant",
    "model": "opus",
    "content": [
        {"type": "thinking", "thinking": "The user wants the weather.", "signature": "EuYBCkQYAiJA-signed"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix-redacted"},
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "Paris weather"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [SEARCH_RESULT]},
        {"type": "text", "text": "Let me look that up.\u2028Paris first.", "citations": [CITATION]},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "days": [1, 2]}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": WHOLE_USAGE,
}
WEATHER_TOOL = {"name": "get_weather", "description": "The weather.", "input_schema": {"type": "object"}}


def stream_body(**fields: Any) -> dict[str, Any]:
    return {"model": "claude/opus", "max_tokens": 100, "messages": QUESTION, "tools": [WEATHER_TOOL], **fields}


def stream_error(url: str) -> anthropic.APIStatusError:
    """The error the SDK's stream helper raises reading the answer to `stream_body()`."""
    with (
        sdk(url) as client,
        pytest.raises(anthropic.APIStatusError) as raised,
        client.messages.stream(**stream_body()) as stream,  # type: ignore[arg-type]
    ):
        stream.get_final_message()
    return raised.value


def test_a_whole_message_answered_to_a_stream_reaches_the_sdks_stream_helper(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    """Its JSON was relayed as it was: the SDK found no event in it, and raised openfusion's "ended before
    message_stop" error."""
    fake, _ = anthropic_native
    fake.replies = [Reply(whole=WHOLE_MESSAGE)]
    with sdk(gateway) as client, client.messages.stream(**stream_body()) as stream:  # type: ignore[arg-type]
        texts = list(stream.text_stream)
        message = stream.get_final_message()
        generation_id = stream.response.headers["x-generation-id"]

    assert "".join(texts) == "Let me look that up.\u2028Paris first."
    assert message.id == "msg_whole" and message.model == "opus"
    kinds = [block.type for block in message.content]
    assert kinds == ["thinking", "redacted_thinking", "server_tool_use", "web_search_tool_result", "text", "tool_use"]
    thinking, redacted, search, result, text, call = message.content
    assert [citation.cited_text for citation in text.citations or []] == ["Mild in Paris."]  # type: ignore[union-attr]
    assert (thinking.thinking, thinking.signature) == ("The user wants the weather.", "EuYBCkQYAiJA-signed")  # type: ignore[union-attr]
    assert redacted.data == "EmwKAhgBEgy3va3pzix-redacted"  # type: ignore[union-attr]
    assert search.input == {"query": "Paris weather"}  # type: ignore[union-attr]
    assert result.content[0].url == SEARCH_RESULT["url"]  # type: ignore[union-attr,index]
    assert (call.id, call.name, call.input) == ("toolu_1", "get_weather", {"city": "Paris", "days": [1, 2]})  # type: ignore[union-attr]
    assert (message.stop_reason, message.stop_sequence) == ("tool_use", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (30, 12)
    assert message.usage.cache_read_input_tokens == 5
    assert fake.calls[0].body["stream"] is True
    record = generation(gateway, generation_id)
    assert record["status"] == "ok" and (record["tokens_prompt"], record["tokens_completion"]) == (35, 12), record


def test_a_whole_message_answered_to_a_stream_comes_as_anthropics_events(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    """The raw stream, as `create(stream=True)` reads it: each event named by its type, each block started before
    its deltas and stopped after them, `message_start` with the usage and no content, `message_stop` last."""
    fake, _ = anthropic_native
    fake.replies = [Reply(whole=WHOLE_MESSAGE)]
    with sdk(gateway) as client:
        events = list(client.messages.create(**stream_body(), stream=True))  # type: ignore[call-overload]
    with httpx.stream("POST", f"{gateway}/v1/messages", json=stream_body(stream=True),
                      headers={"x-api-key": "sk-client-7d2e4f9a"}) as response:  # fmt: skip
        lines = [line for line in response.iter_lines() if line]

    names = [line[7:] for line in lines if line.startswith("event: ")]
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert names == [event["type"] for event in data] == [event.type for event in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    start = events[0].message  # type: ignore[union-attr]
    assert start.content == [] and start.stop_reason is None and start.usage.input_tokens == 30
    blocks: dict[int, list[str]] = {}
    for event in data[1:-2]:
        blocks.setdefault(event["index"], []).append(
            event["type"] if event["type"] != "content_block_delta" else event["delta"]["type"]
        )
    assert blocks == {
        0: ["content_block_start", "thinking_delta", "signature_delta", "content_block_stop"],
        1: ["content_block_start", "content_block_stop"],  # redacted thinking, whole in its start
        2: ["content_block_start", "input_json_delta", "content_block_stop"],
        3: ["content_block_start", "content_block_stop"],  # a server tool's result, whole in its start
        4: ["content_block_start", "citations_delta", "text_delta", "content_block_stop"],
        5: ["content_block_start", "input_json_delta", "content_block_stop"],
    }
    starts = {event["index"]: event["content_block"] for event in data if event["type"] == "content_block_start"}
    deltas = {event["index"]: event["delta"] for event in data if event["type"] == "content_block_delta"}
    assert starts[1] == WHOLE_MESSAGE["content"][1] and starts[3] == WHOLE_MESSAGE["content"][3]
    assert starts[0] == {"type": "thinking", "thinking": "", "signature": ""} and starts[5]["input"] == {}
    assert starts[4] == {"type": "text", "text": "", "citations": []} and deltas[4]["text"].endswith("Paris first.")
    assert json.loads(deltas[5]["partial_json"]) == {"city": "Paris", "days": [1, 2]}
    delta = events[-2]
    assert delta.delta.stop_reason == "tool_use" and delta.usage.output_tokens == 12  # type: ignore[union-attr]


def test_an_error_object_answered_to_a_stream_is_an_error_the_sdk_raises(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    fake, _ = anthropic_native
    fake.replies = [Reply(whole={"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded now"}})]
    raised = stream_error(gateway)
    generation_id = raised.response.headers["x-generation-id"]

    assert raised.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded now"}}
    record = generation(gateway, generation_id)
    assert record["status"] == "error" and record["failure_reason"] == "upstream_error", record
    assert "Overloaded now" in json.dumps(record)


def test_json_that_is_not_a_message_answered_to_a_stream_says_so(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    fake, _ = anthropic_native
    fake.replies = [Reply(whole={"object": "chat.completion", "choices": []})]
    raised = stream_error(gateway)

    error = raised.body["error"]  # type: ignore[index]
    assert error["type"] == "api_error" and "JSON that is not a message" in error["message"]
    record = generation(gateway, raised.response.headers["x-generation-id"])
    assert record["status"] == "error" and record["failure_reason"] == "upstream_invalid_response", record


def test_a_whole_message_answered_to_a_stream_is_read_only_up_to_its_bound(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(completion_events, "MAX_WHOLE_BYTES", 64)
    fake, _ = anthropic_native
    fake.replies = [Reply(whole=WHOLE_MESSAGE)]
    raised = stream_error(gateway)

    assert "whole answer over 64 bytes" in raised.body["error"]["message"]  # type: ignore[index]


class Tap(httpx2.HTTPTransport):
    """The SDK's transport (on `httpx2`, the SDK's own), keeping the bytes of each response as it reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.read = bytearray()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        return httpx2.Response(response.status_code, headers=response.headers, extensions=response.extensions,
                              stream=_Tapped(response.stream, self.read))  # fmt: skip


class _Tapped(httpx2.SyncByteStream):
    def __init__(self, stream: Any, read: bytearray) -> None:
        self._stream, self._read = stream, read

    def __iter__(self) -> Iterator[bytes]:
        for part in self._stream:
            self._read.extend(part)
            yield part

    def close(self) -> None:
        self._stream.close()


def tapped_sdk(url: str, tap: Tap) -> anthropic.Anthropic:
    """The anthropic SDK on a transport that keeps what it reads."""
    return anthropic.Anthropic(base_url=url, api_key="sk-client-7d2e4f9a", max_retries=0,
                               http_client=httpx2.Client(transport=tap, timeout=60))  # fmt: skip


def whole_events_only(read: bytes) -> bool:
    """Whether a stream as its client read it holds whole events only: it ends where an event ends, and each event has
    data that is JSON or `[DONE]` (none cut short, nor made a `ping` without data, as half events once were)."""
    events = read.split(b"\n\n")
    if events.pop() != b"":
        return False
    for event in events:
        data = b"\n".join([line[6:] for line in event.split(b"\n") if line.startswith(b"data: ")])
        if data == b"[DONE]":  # the chat stream's end
            continue
        try:
            json.loads(data)
        except ValueError:
            return False
    return bool(events)


def read_failed_stream(client: anthropic.Anthropic) -> tuple[str, anthropic.APIStatusError]:
    """The text the SDK's stream helper yields of a native stream that fails after it began, and the error it raises
    for the `error` event that ends it (any other exception, such as one for an event it cannot parse, escapes)."""
    text: list[str] = []
    body: dict[str, Any] = {"model": "claude/opus", "max_tokens": 10, "messages": QUESTION}
    with pytest.raises(anthropic.APIStatusError) as raised, client.messages.stream(**body) as stream:
        text.extend(event.text for event in stream if event.type == "text")
    return "".join(text), raised.value


@pytest.mark.parametrize(
    ("reply", "failure"),
    [
        (Reply(half_after=4, pause_s=0.5), "upstream_unreachable"),  # the connection dropped in the middle of an event
        (Reply(malformed_after=4), "upstream_invalid_response"),  # an event no client can read
    ],
    ids=["cut mid-event", "malformed event"],
)
def test_a_native_stream_the_provider_breaks_off_is_an_error_the_sdk_raises(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str, reply: Reply, failure: str
) -> None:
    """Anthropic's SDK reads the stream up to the break, then raises the `error` event that ends it: not a JSON error
    for the broken event, which used to reach it first (relayed, or completed by the blank line before the error)."""
    fake, _ = anthropic_native
    fake.replies = [reply]
    tap = Tap()
    with tapped_sdk(gateway, tap) as client:
        text, raised = read_failed_stream(client)

    assert text == "Native "  # what came before the break
    assert raised.body["type"] == "error" and raised.body["error"]["type"] == "api_error", raised.body  # type: ignore[index]
    record = generation(gateway, raised.response.headers["x-generation-id"])
    assert record["status"] == "error" and record["failure_reason"] == failure, record
    [call] = record["calls"]
    assert call["status"] == "error", call
    assert whole_events_only(bytes(tap.read)), bytes(tap.read)
    if reply.half_after is not None:  # the fault: the provider sent the first half of an event, and no more of it
        assert fake.calls[0].half and b"answer." not in tap.read
    else:  # the fault: the provider sent an event that is not JSON (kept from the client)
        assert "not JSON" in call["error"] and MALFORMED.split(b"\n")[1] + b"\n" not in tap.read


@pytest.mark.parametrize("reply", [Reply(pause_after=4), Reply(half_after=4)], ids=["between events", "mid-event"])
def test_a_native_stream_the_provider_stops_sending_ends_with_a_timeout_error(
    anthropic_native: tuple[FakeAnthropic, str], make_settings: Callable[..., Settings], tmp_path: Path, reply: Reply
) -> None:
    """The provider goes silent mid-answer (for 60 s) past the read timeout (1 s): the SDK raises Anthropic's
    `timeout_error`, the provider's response is closed and the request recorded as timed out."""
    fake, native_url = anthropic_native
    fake.replies = [reply]
    tap = Tap()
    with (
        serve_native(native_url, make_settings, tmp_path, http={"read_timeout_s": 1.0}) as url,
        tapped_sdk(url, tap) as client,
    ):
        text, raised = read_failed_stream(client)
        wait_until(lambda: fake.calls[0].disconnected, timeout=10)  # the fault: cut short while the provider paused
        record = generation(url, raised.response.headers["x-generation-id"])

    assert text == "Native " and whole_events_only(bytes(tap.read)), bytes(tap.read)
    assert bool(fake.calls[0].half) is (reply.half_after is not None)  # the fault: silent in the middle of an event
    assert raised.body["error"]["type"] == "timeout_error", raised.body  # type: ignore[index]
    assert record["status"] == "error" and record["failure_reason"] == "upstream_timeout", record


def test_a_native_stream_cut_after_its_message_stop_is_whole(
    anthropic_native: tuple[FakeAnthropic, str], gateway: str
) -> None:
    """The provider's connection breaks after `message_stop` (before the response's own end): the answer was whole,
    the SDK's stream helper gets the message, not an error added after it, and the request is recorded as answered."""
    fake, _ = anthropic_native
    fake.replies = [Reply(cut_after_stop=True, pause_s=0.5)]
    body: dict[str, Any] = {"model": "claude/opus", "max_tokens": 10, "messages": QUESTION}
    tap = Tap()
    with tapped_sdk(gateway, tap) as client, client.messages.stream(**body) as stream:
        message = stream.get_final_message()
        generation_id = stream.response.headers["x-generation-id"]

    assert fake.calls[0].cut  # the fault: the connection was cut after the last event
    assert message.content[0].text == "Native answer." and message.stop_reason == "end_turn"  # type: ignore[union-attr]
    assert b"event: error" not in tap.read
    record = generation(gateway, generation_id)
    assert record["status"] == "ok" and (record["tokens_prompt"], record["tokens_completion"]) == (24, 4), record
    [call] = record["calls"]
    assert call["status"] == "ok", call
