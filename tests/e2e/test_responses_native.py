"""Pass-through to a provider that speaks the Responses API itself (`responses = true`): forwarded, relayed."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from e2e.conftest import trio_provider
from fakes.upstream import FakeUpstream, Script
from openfusion.api import completion_events
from openfusion.settings import ProviderConfig

from .test_activity_wiring import generation
from .test_passthrough import OPENROUTER_ONLY  # which OpenAI's Responses API refuses too ("Unknown parameter")

RESPONSES = "/v1/responses"


@pytest.fixture
def native_server(
    upstream: FakeUpstream, fake_upstream: tuple[FakeUpstream, str], start_server: Callable[..., Any], tmp_path: Path
) -> Iterator[str]:
    """openfusion with `native/*` on a provider that speaks the Responses API, `fake/*` on one that does not."""
    _, url = fake_upstream
    providers = [
        ProviderConfig(name="native", base_url=f"{url}/v1", api_key_env="FAKE_KEY", models=["native/*"],
                       strip_prefix=True, responses=True),
        ProviderConfig(name="fake", base_url=f"{url}/v1", api_key_env="FAKE_KEY", models=["fake/*"], strip_prefix=True),
        # OpenRouter's Responses endpoint (`reasoning_style = "openrouter"` says it is OpenRouter)
        ProviderConfig(name="router", base_url=f"{url}/v1", api_key_env="FAKE_KEY", models=["router/*"],
                       strip_prefix=True, responses=True, reasoning_style="openrouter"),
    ]  # fmt: skip
    server: AbstractContextManager[str] = start_server(providers=providers, activity={"path": tmp_path / "a.db"})
    with server as base:
        yield base


def test_a_native_provider_gets_the_request_as_sent(upstream: FakeUpstream, native_server: str) -> None:
    upstream.script("plain", Script(content="Native hello."))
    body = {"model": "native/plain", "input": "Hi", "instructions": "Be brief.", "include": ["x"], "store": True,
            "plugins": [{"id": "web"}], "models": ["native/other"]}  # fmt: skip

    response = httpx.post(f"{native_server}{RESPONSES}", json=body, timeout=30)

    assert response.status_code == 200
    assert response.json()["id"].startswith("resp_fake") and response.json()["output"][0]["content"][0]["text"] == (
        "Native hello."
    )
    call = upstream.calls_for("plain")[0]
    assert call.path == "/v1/responses"
    # As sent, but the model's upstream name; openfusion's own `models` list is not the provider's business, nor
    # OpenRouter's `plugins` (test_openrouters_fields_*), nor is keeping the response (openfusion keeps it, per key):
    # `store` goes false (see test_native_store_*).
    assert call.body == {"model": "plain", "input": "Hi", "instructions": "Be brief.", "include": ["x"],
                         "store": False}  # fmt: skip
    assert call.headers["authorization"] == "Bearer sk-provider-secret"
    record = generation(native_server, response.headers["x-generation-id"])
    assert record["api_type"] == "responses" and (record["tokens_prompt"], record["tokens_completion"]) == (11, 7)
    assert record["calls"][0]["provider_name"] == "native"


# OpenAI's own, its `reasoning` and `user` among them: they reach it as sent.
OPENAIS_OWN: dict[str, Any] = {
    "reasoning": {"effort": "low"}, "user": "u-1", "max_tool_calls": 3, "prompt_cache_key": "k-1",
    "safety_identifier": "s-1", "service_tier": "auto", "metadata": {"team": "a"},
}  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
def test_a_native_provider_gets_none_of_openrouters_fields(
    upstream: FakeUpstream, native_server: str, stream: bool
) -> None:
    upstream.script("plain", Script(content="Native hello."))
    client = openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0)
    with client:
        if stream:
            with client.responses.stream(model="native/plain", input="Hi",
                                         extra_body={**OPENROUTER_ONLY, **OPENAIS_OWN}) as events:  # fmt: skip
                answer = events.get_final_response()
        else:
            answer = client.responses.create(model="native/plain", input="Hi",
                                             extra_body={**OPENROUTER_ONLY, **OPENAIS_OWN})  # fmt: skip

    assert answer.output_text == "Native hello."
    sent = upstream.calls_for("plain")[0].body
    streamed = {"stream": True} if stream else {}
    assert sent == {"model": "plain", "input": "Hi", "store": False, **OPENAIS_OWN, **streamed}


def test_openrouters_fields_go_to_openrouter_alone_a_fallback_included(
    upstream: FakeUpstream, native_server: str
) -> None:
    """The first provider (OpenAI) gets the body without them and fails; the fallback, OpenRouter, gets them."""
    upstream.script("plain", Script(status=400, error_message="Unknown parameter"))
    upstream.script("other", Script(content="From the fallback."))
    fusion_off = {"id": "fusion", "enabled": False}  # openfusion's own plugin: neither provider's business
    extra = {**OPENROUTER_ONLY, "plugins": [*OPENROUTER_ONLY["plugins"], fusion_off], "models": ["router/other"]}
    with openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0) as client:
        answer = client.responses.create(model="native/plain", input="Hi", extra_body=extra)

    assert answer.output_text == "From the fallback."
    assert upstream.calls_for("plain")[0].body == {"model": "plain", "input": "Hi", "store": False}
    assert upstream.calls_for("other")[0].body == {"model": "other", "input": "Hi", "store": False, **OPENROUTER_ONLY}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("reasoning", "to_openai"),
    [
        ({"effort": "high", "summary": "auto", "max_tokens": 2000, "exclude": True, "enabled": True},
         {"effort": "high", "summary": "auto"}),
        ({"max_tokens": 2000, "exclude": True}, {"effort": "medium"}),
        ({"exclude": True}, None),
        # `enabled: false` wins over the effort or budget beside it: OpenAI gets no `reasoning` at all (its efforts
        # that come closest to off, `none` and `minimal`, are each refused by some of its models).
        ({"enabled": False, "effort": "high"}, None),
        ({"enabled": False, "effort": "low", "summary": "auto"}, None),
        ({"enabled": False, "max_tokens": 3500}, None),
    ],
    ids=["effort-and-budget", "budget-only", "exclude-only", "off-effort", "off-effort-and-summary", "off-budget"],
)  # fmt: skip
def test_openrouters_reasoning_keys_go_to_openrouter_alone_a_fallback_included(
    upstream: FakeUpstream, native_server: str, reasoning: dict[str, Any], to_openai: dict[str, Any] | None,
    stream: bool,
) -> None:  # fmt: skip
    """OpenAI's `reasoning` has `effort` and `summary` and refuses OpenRouter's `max_tokens`, `exclude` and `enabled`
    ("Unknown parameter"): the first provider (OpenAI) gets the object without them, the fallback (OpenRouter) whole."""
    upstream.script("plain", Script(status=400, error_message="No such model"))
    upstream.script("other", Script(content="From the fallback."))
    extra = {"reasoning": reasoning, "models": ["router/other"]}
    with openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0) as client:
        if stream:
            with client.responses.stream(model="native/plain", input="Hi", extra_body=extra) as events:
                answer = events.get_final_response()
        else:
            answer = client.responses.create(model="native/plain", input="Hi", extra_body=extra)

    assert answer.output_text == "From the fallback."
    streamed = {"stream": True} if stream else {}
    to_openai_field = {} if to_openai is None else {"reasoning": to_openai}
    assert upstream.calls_for("plain")[0].body == {"model": "plain", "input": "Hi", "store": False, **to_openai_field,
                                                   **streamed}  # fmt: skip
    assert upstream.calls_for("other")[0].body == {"model": "other", "input": "Hi", "store": False,
                                                   "reasoning": reasoning, **streamed}  # fmt: skip


@pytest.mark.parametrize(
    ("reasoning", "max_output_tokens", "effort"),
    [
        ({"max_tokens": 3500}, 4000, "high"),
        ({"max_tokens": 2000, "summary": "auto"}, 4000, "medium"),
        ({"max_tokens": 500}, 4000, "low"),
        ({"enabled": True}, None, "medium"),
        ({"enabled": True, "effort": "low"}, None, "low"),
    ],
    ids=["budget-high", "budget-medium", "budget-low", "enabled", "effort-wins"],
)
def test_a_reasoning_budget_or_enabled_reaches_an_effort_only_provider_as_an_effort(
    upstream: FakeUpstream, native_server: str, reasoning: dict[str, Any], max_output_tokens: int | None, effort: str
) -> None:
    """OpenRouter's `max_tokens` budget is the effort spending about that share of the output limit (high ~80%,
    medium ~50%, low ~20%), `enabled: true` the default effort (medium): the provider reasons as the client asked."""
    upstream.script("plain", Script(content="Thought about it."))
    limit = {} if max_output_tokens is None else {"max_output_tokens": max_output_tokens}
    with openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0) as client:
        answer = client.responses.create(model="native/plain", input="Hi", extra_body={"reasoning": reasoning}, **limit)

    assert answer.output_text == "Thought about it."
    kept = {key: value for key, value in reasoning.items() if key == "summary"}
    assert upstream.calls_for("plain")[0].body == {"model": "plain", "input": "Hi", "store": False, **limit,
                                                   "reasoning": {**kept, "effort": effort}}  # fmt: skip


def test_a_native_request_with_a_malformed_reasoning_is_a_400(upstream: FakeUpstream, native_server: str) -> None:
    """Read as OpenRouter's object (its keys are translated per provider): an effort of no known name is refused here,
    in the Responses API's error shape."""
    client = openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0)
    with client, pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="native/plain", input="Hi", extra_body={"reasoning": {"effort": "ultra"}})
    error = raised.value.response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "reasoning.effort"
    assert upstream.calls_for("plain") == []


@pytest.mark.parametrize("stream", [False, True])
def test_fallbacks_a_native_provider_cannot_take_are_translated(
    upstream: FakeUpstream, native_server: str, stream: bool
) -> None:
    """A chat-only fallback (`fake/*`) never gets a Responses request: the whole request goes as chat completions."""
    upstream.script("plain", Script(status=400, error_message="refused"))
    upstream.script("solo", Script(content="From the chat fallback."))
    body = {"model": "native/plain", "input": "Hi", "models": ["fake/solo"], "stream": stream}

    response = httpx.post(f"{native_server}{RESPONSES}", json=body, timeout=30)

    assert response.status_code == 200, response.text
    assert "From the chat fallback." in response.text
    assert [(call.path, call.model) for call in upstream.calls] == [
        ("/v1/chat/completions", "plain"),
        ("/v1/chat/completions", "solo"),
    ]


def test_a_native_stream_is_relayed(upstream: FakeUpstream, native_server: str) -> None:
    upstream.script("plain", Script(content="Streamed natively."))

    client = openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0)
    with client, client.responses.stream(model="native/plain", input="Hi") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()

    assert final.output_text == "Streamed natively." and final.id.startswith("resp_fake")
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert upstream.calls_for("plain")[0].path == "/v1/responses" and upstream.calls_for("plain")[0].stream


@pytest.mark.parametrize("stream", [False, True])
def test_a_native_follow_up_spells_out_the_stored_conversation(
    upstream: FakeUpstream, native_server: str, stream: bool
) -> None:
    upstream.script("plain", Script(content="Paris."), Script(content="2.1 million."))

    first = httpx.post(f"{native_server}{RESPONSES}", json={"model": "native/plain", "input": "Capital of France?",
                       "stream": stream}, timeout=30)  # fmt: skip
    first_id = first.json()["id"] if not stream else _completed_id(first.text)
    second = httpx.post(f"{native_server}{RESPONSES}", json={"model": "native/plain", "input": "Population?",
                        "previous_response_id": first_id}, timeout=30)  # fmt: skip

    assert second.status_code == 200
    sent = upstream.calls_for("plain")[1].body
    assert "previous_response_id" not in sent  # resolved here, per key: never the provider's to look up
    assert [item.get("role") for item in sent["input"]] == ["user", "assistant", "user"]
    assert sent["input"][1]["content"][0]["text"] == "Paris." and sent["input"][2]["content"] == "Population?"


def test_fusion_items_are_not_sent_to_a_native_provider(upstream: FakeUpstream, native_server: str) -> None:
    history = [
        {"role": "user", "content": "Why?"},
        {"type": "openrouter:fusion", "id": "st_1", "status": "completed", "content": [], "responses": []},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Because."}]},
        {"role": "user", "content": "Sure?"},
    ]

    httpx.post(f"{native_server}{RESPONSES}", json={"model": "native/plain", "input": history}, timeout=30)

    assert [item.get("type", "message") for item in upstream.calls_for("plain")[0].body["input"]] == ["message"] * 3


def test_a_native_providers_error_is_relayed(upstream: FakeUpstream, native_server: str) -> None:
    upstream.script("plain", Script(status=429, error_message="slow down"))

    response = httpx.post(f"{native_server}{RESPONSES}", json={"model": "native/plain", "input": "Hi"}, timeout=30)

    assert response.status_code == 429 and "slow down" in response.text


def test_a_native_stream_cut_short_ends_failed(upstream: FakeUpstream, native_server: str) -> None:
    upstream.script("plain", Script(content="One two three four.", end_stream_after=2))

    with httpx.stream("POST", f"{native_server}{RESPONSES}", timeout=30,
                      json={"model": "native/plain", "input": "Hi", "stream": True}) as response:  # fmt: skip
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        generation_id = response.headers["x-generation-id"]

    events = [json.loads(line[6:]) for line in lines]
    last = events[-1]
    assert last["type"] == "response.failed" and last["response"]["status"] == "failed"
    assert last["response"]["error"]["code"] == "upstream_invalid_response"
    assert "response.completed" not in "".join(lines)
    numbers = [event["sequence_number"] for event in events]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # the event added comes next in order
    assert generation(native_server, generation_id)["status"] == "error"


def _completed_id(sse: str) -> str:
    events = [json.loads(line[6:]) for line in sse.splitlines() if line.startswith("data: ")]
    return str(next(e["response"]["id"] for e in events if e["type"] == "response.completed"))


def test_a_native_stream_the_provider_ends_with_response_failed_is_recorded_as_failed(
    upstream: FakeUpstream, native_server: str
) -> None:
    failure = {"code": "server_error", "message": "the model crashed"}
    upstream.script("plain", Script(content="One two three.", error_event=failure))

    with httpx.stream("POST", f"{native_server}{RESPONSES}", timeout=30,
                      json={"model": "native/plain", "input": "Hi", "stream": True}) as response:  # fmt: skip
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
        generation_id = response.headers["x-generation-id"]

    # The provider's own failure event reaches the client as it sent it, and ends the stream.
    assert events[-1]["type"] == "response.failed" and events[-1]["response"]["error"] == failure
    record = generation(native_server, generation_id)
    assert record["status"] == "error" and record["failure_reason"] == "upstream_error", record
    assert "the model crashed" in json.dumps(record)


# ---- a provider that ignores `stream: true` and answers with one whole response --------------------------------
CITATION = {"type": "url_citation", "url": "https://example.com/sky", "title": "Sky", "start_index": 0, "end_index": 3}
REASONING = {"id": "rs_whole", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Think of Rayleigh."}],
             "encrypted_content": "gAAAAB-opaque"}  # fmt: skip
TEXT = {"type": "output_text", "text": "Sky is blue.", "annotations": [CITATION], "logprobs": []}
MESSAGE = {"id": "msg_whole", "type": "message", "status": "completed", "role": "assistant", "content": [TEXT]}
CALL = {"id": "fc_whole", "type": "function_call", "status": "completed", "call_id": "call_1", "name": "lookup",
        "arguments": '{"q": "sky"}'}  # fmt: skip
OUTPUT = {"type": "function_call_output", "call_id": "call_1", "output": "the sky scatters blue light"}  # CALL's
WHOLE_USAGE = {"input_tokens": 13, "output_tokens": 9, "total_tokens": 22, "input_tokens_details": {"cached_tokens": 0},
               "output_tokens_details": {"reasoning_tokens": 4}}  # fmt: skip


def whole_response(status: str = "completed", **fields: Any) -> bytes:
    """A provider's whole `response` object, with a reasoning item, a message and a function call."""
    response = {"id": "resp_whole", "object": "response", "created_at": 1765000000, "status": status, "error": None,
                "incomplete_details": None, "model": "plain", "output": [REASONING, MESSAGE, CALL],
                "usage": WHOLE_USAGE, **fields}  # fmt: skip
    return json.dumps(response).encode()


def answered_whole(upstream: FakeUpstream, raw: bytes) -> None:
    upstream.script("plain", Script(raw_body=raw, raw_media_type="application/json"))


def test_a_whole_response_answered_to_a_stream_reaches_the_sdks_stream_helper(
    upstream: FakeUpstream, native_server: str
) -> None:
    """Its JSON was relayed as it was: openai-python's helper wants `response.created` first, and raised."""
    answered_whole(upstream, whole_response())
    client = openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0)
    with client, client.responses.stream(model="native/plain", input="Why is the sky blue?") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()

    assert upstream.calls_for("plain")[0].stream
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert final.id == "resp_whole" and final.output_text == "Sky is blue."
    reasoning, message, call = final.output
    assert reasoning.type == "reasoning" and reasoning.encrypted_content == "gAAAAB-opaque"
    assert [part.text for part in reasoning.summary] == ["Think of Rayleigh."]
    assert message.type == "message" and message.content[0].annotations[0].url == CITATION["url"]  # type: ignore[union-attr]
    assert call.type == "function_call" and (call.call_id, call.name, call.arguments) == (
        "call_1", "lookup", '{"q": "sky"}'
    )  # fmt: skip
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (13, 9)


def test_a_whole_response_answered_to_a_stream_comes_as_the_apis_events(
    upstream: FakeUpstream, native_server: str
) -> None:
    """The raw events, as `create(stream=True)` reads them: numbered in order, each item added then done."""
    answered_whole(upstream, whole_response())
    client = openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0)
    with client:
        raw = client.responses.with_raw_response.create(model="native/plain", input="Hi", stream=True)
        generation_id = raw.headers["x-generation-id"]
        events = list(raw.parse())

    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert [event.type for event in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added",  # the reasoning item: its summary part by part
        "response.reasoning_summary_part.added", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",  # the message: its text part
        "response.content_part.added", "response.output_text.delta", "response.output_text.annotation.added",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",  # the function call: its arguments
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    created = events[0].response  # type: ignore[union-attr]
    assert created.id == "resp_whole" and created.status == "in_progress" and created.output == []
    assert events[2].item.encrypted_content is None  # type: ignore[union-attr]  # it comes with the item done
    assert events[10].delta == "Sky is blue." and events[16].delta == '{"q": "sky"}'  # type: ignore[union-attr]
    assert [event.output_index for event in events if event.type == "response.output_item.done"] == [0, 1, 2]  # type: ignore[union-attr]
    assert events[-1].response.status == "completed"  # type: ignore[union-attr]
    record = generation(native_server, generation_id)
    assert record["status"] == "ok" and (record["tokens_prompt"], record["tokens_completion"]) == (13, 9), record


def test_a_whole_response_answered_to_a_stream_is_kept_for_a_follow_up(
    upstream: FakeUpstream, native_server: str
) -> None:
    answered_whole(upstream, whole_response())
    with httpx.stream("POST", f"{native_server}{RESPONSES}", timeout=30,
                      json={"model": "native/plain", "input": "Why?", "stream": True}) as response:  # fmt: skip
        response.read()
    upstream.script("plain", Script(content="Because of scattering."))

    second = httpx.post(f"{native_server}{RESPONSES}", json={"model": "native/plain", "input": [OUTPUT],
                        "previous_response_id": "resp_whole"}, timeout=30)  # fmt: skip

    assert second.status_code == 200, second.text
    sent = upstream.calls_for("plain")[1].body["input"]
    # The stored response is what its `response.completed` said: its message and call continue the conversation.
    assert [item.get("type") for item in sent] == ["message", "message", "function_call", "function_call_output"]
    # Without their ids: the provider was asked to keep nothing, and refuses an id it never stored.
    assert sent[1] == without_id(MESSAGE) and sent[2] == without_id(CALL)


@pytest.mark.parametrize("stream", [False, True])
def test_a_response_cut_off_at_max_output_tokens_is_kept_and_continued(
    upstream: FakeUpstream, native_server: str, stream: bool
) -> None:
    """OpenAI keeps an incomplete response, and a follow-up may continue it: streamed or not, so does openfusion."""
    upstream.script("plain", Script(content="The sky is blue because", finish_reason="length"),
                    Script(content="of Rayleigh scattering."))  # fmt: skip
    with openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0) as client:
        if stream:  # the SDK's stream helper gives a completed response alone: the events say how it ended
            events = list(client.responses.create(model="native/plain", input="Why?", max_output_tokens=5, stream=True))
            assert events[-1].type == "response.incomplete"
            first = events[-1].response  # type: ignore[union-attr]
        else:
            first = client.responses.create(model="native/plain", input="Why?", max_output_tokens=5)
        follow_up = client.responses.create(model="native/plain", input="Go on.", previous_response_id=first.id)
        kept = client.responses.retrieve(first.id)

    assert first.status == "incomplete" and first.incomplete_details is not None
    assert first.incomplete_details.reason == "max_output_tokens" and first.store is True
    assert follow_up.output_text == "of Rayleigh scattering."
    sent = upstream.calls_for("plain")[1].body["input"]
    assert [sent[0]["content"], sent[1]["content"][0]["text"], sent[2]["content"]] == [
        "Why?", "The sky is blue because", "Go on."
    ]  # fmt: skip
    assert kept.status == "incomplete" and kept.output_text == "The sky is blue because"


@pytest.mark.parametrize("stream", [False, True])
def test_a_translated_response_cut_off_at_max_output_tokens_is_kept_and_continued(
    upstream: FakeUpstream, native_server: str, stream: bool
) -> None:
    """The same through a chat-completions provider: the answer cut at its `length` is kept and continued."""
    upstream.script("plain", Script(content="The sky is blue because", finish_reason="length"),
                    Script(content="of Rayleigh scattering."))  # fmt: skip
    with openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0) as client:
        if stream:
            events = list(client.responses.create(model="fake/plain", input="Why?", max_output_tokens=5, stream=True))
            first = events[-1].response  # type: ignore[union-attr]
        else:
            first = client.responses.create(model="fake/plain", input="Why?", max_output_tokens=5)
        follow_up = client.responses.create(model="fake/plain", input="Go on.", previous_response_id=first.id)

    assert first.status == "incomplete" and follow_up.output_text == "of Rayleigh scattering."
    assert upstream.calls_for("plain")[1].body["messages"] == [
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "The sky is blue because"},
        {"role": "user", "content": "Go on."},
    ]


def test_an_incomplete_streamed_response_counts_its_usage(upstream: FakeUpstream, native_server: str) -> None:
    upstream.script("plain", Script(content="The sky is blue because", finish_reason="length"))
    with httpx.stream("POST", f"{native_server}{RESPONSES}", timeout=30,
                      json={"model": "native/plain", "input": "Why?", "stream": True}) as response:  # fmt: skip
        response.read()

    record = generation(native_server, response.headers["x-generation-id"])
    assert record["status"] == "ok" and (record["tokens_prompt"], record["tokens_completion"]) == (11, 7), record


def test_an_incomplete_whole_response_ends_its_stream_incomplete(upstream: FakeUpstream, native_server: str) -> None:
    answered_whole(upstream, whole_response("incomplete", incomplete_details={"reason": "max_output_tokens"}))
    with httpx.stream("POST", f"{native_server}{RESPONSES}", timeout=30,
                      json={"model": "native/plain", "input": "Hi", "stream": True}) as response:  # fmt: skip
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]

    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert "response.completed" not in [event["type"] for event in events]


def test_an_error_object_answered_to_a_stream_is_an_error_the_sdk_raises(
    upstream: FakeUpstream, native_server: str
) -> None:
    error = {"message": "the model is overloaded", "type": "server_error", "code": "server_overloaded", "param": None}
    answered_whole(upstream, json.dumps({"error": error}).encode())
    client = openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0)
    with (
        client,
        pytest.raises(openai.APIError) as raised,
        client.responses.stream(model="native/plain", input="Hi") as stream,
    ):
        list(stream)

    assert raised.value.message == "the model is overloaded" and raised.value.body == error
    with httpx.stream("POST", f"{native_server}{RESPONSES}", timeout=30,
                      json={"model": "native/plain", "input": "Hi", "stream": True}) as response:  # fmt: skip
        lines = [line for line in response.iter_lines() if line]
        generation_id = response.headers["x-generation-id"]
    assert lines[0] == "event: error" and json.loads(lines[1][6:]) == {
        "type": "error", "sequence_number": 0, "code": "server_overloaded", "message": "the model is overloaded",
        "param": None, "error": error,
    }  # fmt: skip
    record = generation(native_server, generation_id)
    assert record["status"] == "error" and record["failure_reason"] == "upstream_error", record


def test_a_failed_whole_response_ends_its_stream_failed(upstream: FakeUpstream, native_server: str) -> None:
    failure = {"code": "server_error", "message": "the model crashed"}
    answered_whole(upstream, whole_response("failed", error=failure, output=[], usage=None))
    with httpx.stream("POST", f"{native_server}{RESPONSES}", timeout=30,
                      json={"model": "native/plain", "input": "Hi", "stream": True}) as response:  # fmt: skip
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
        generation_id = response.headers["x-generation-id"]

    assert [event["type"] for event in events] == ["response.created", "response.in_progress", "response.failed"]
    assert events[-1]["response"]["error"] == failure
    record = generation(native_server, generation_id)
    assert record["status"] == "error" and "the model crashed" in json.dumps(record), record


def test_a_whole_response_answered_to_a_stream_is_read_only_up_to_its_bound(
    upstream: FakeUpstream, native_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(completion_events, "MAX_WHOLE_BYTES", 64)
    answered_whole(upstream, whole_response())
    with httpx.stream("POST", f"{native_server}{RESPONSES}", timeout=30,
                      json={"model": "native/plain", "input": "Hi", "stream": True}) as response:  # fmt: skip
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]

    assert events[-1]["type"] == "error" and events[-1]["code"] == "upstream_invalid_response"
    assert "whole answer over 64 bytes" in events[-1]["message"]


@pytest.mark.parametrize(
    "raw",
    [whole_response("queued"), json.dumps({"object": "chat.completion", "choices": []}).encode()],
    ids=["a response still queued", "a chat completion"],
)
def test_json_that_is_not_a_finished_response_answered_to_a_stream_says_so(
    upstream: FakeUpstream, native_server: str, raw: bytes
) -> None:
    answered_whole(upstream, raw)
    with httpx.stream("POST", f"{native_server}{RESPONSES}", timeout=30,
                      json={"model": "native/plain", "input": "Hi", "stream": True}) as response:  # fmt: skip
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
        generation_id = response.headers["x-generation-id"]

    assert [event["type"] for event in events] == ["error"] and events[0]["code"] == "upstream_invalid_response"
    assert "not a finished response" in events[0]["message"]
    record = generation(native_server, generation_id)
    assert record["status"] == "error" and record["failure_reason"] == "upstream_invalid_response", record


# ---- `store`: the provider keeps nothing unless the operator says so; openfusion keeps responses itself ----------
def without_id(item: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in item.items() if key != "id"}


def test_native_store_is_false_upstream_and_a_follow_up_still_continues_the_conversation(
    upstream: FakeUpstream, native_server: str
) -> None:
    """A native request goes with `store: false` whatever the client's `store`; a follow-up naming it is resolved from
    openfusion's own store, its items sent without the ids the provider never stored; a reasoning item the client
    replays with its `encrypted_content` goes on with it (how a stateless conversation keeps its reasoning)."""
    answered_whole(upstream, whole_response())
    client = openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0)
    with client:
        first = client.responses.create(model="native/plain", input="Why?", store=True,
                                        include=["reasoning.encrypted_content"])  # fmt: skip
        upstream.script("plain", Script(content="Because of scattering."))
        second = client.responses.create(model="native/plain", input=[OUTPUT], previous_response_id=first.id)
        replayed: Any = [{"role": "user", "content": "Why?"}, REASONING, MESSAGE, {"role": "user", "content": "More?"}]
        client.responses.create(model="native/plain", input=replayed, include=["reasoning.encrypted_content"])
        kept = client.responses.retrieve(second.id)  # openfusion's own copy, for the key that made it

    assert second.output_text == "Because of scattering." and kept.output_text == "Because of scattering."
    calls = upstream.calls_for("plain")
    assert [call.body["store"] for call in calls] == [False, False, False]
    follow_up = calls[1].body["input"]
    assert [item.get("type") for item in follow_up] == ["message", "message", "function_call", "function_call_output"]
    assert follow_up[1] == without_id(MESSAGE) and follow_up[2] == without_id(CALL)
    assert not any("id" in item for item in follow_up)
    assert calls[2].body["input"][1] == without_id(REASONING)  # its encrypted_content carries the reasoning


def test_native_store_goes_as_sent_when_the_operator_lets_the_provider_keep_responses(
    upstream: FakeUpstream, fake_upstream: tuple[FakeUpstream, str], start_server: Callable[..., Any], tmp_path: Path
) -> None:
    provider = ProviderConfig(name="native", base_url=f"{fake_upstream[1]}/v1", api_key_env="FAKE_KEY",
                              models=["native/*"], strip_prefix=True, responses=True, responses_store=True)  # fmt: skip
    upstream.script("plain", Script(content="Kept upstream."))
    providers = [provider, trio_provider(fake_upstream[1])]
    server: AbstractContextManager[str] = start_server(providers=providers, activity={"path": tmp_path / "a.db"})
    with server as base, openai.OpenAI(base_url=f"{base}/v1", api_key="k", max_retries=0) as client:
        client.responses.create(model="native/plain", input="Hi")
        client.responses.create(model="native/plain", input=[{**without_id(MESSAGE), "id": "msg_1"}], store=True)

    first, second = (call.body for call in upstream.calls_for("plain"))
    assert "store" not in first  # the client's (OpenAI's default: kept)
    assert second["store"] is True and second["input"][0]["id"] == "msg_1"  # as sent


@pytest.mark.parametrize("whole", [False, True], ids=["streamed", "answered-whole"])
def test_a_native_response_openfusion_keeps_says_store_true_to_the_client(
    upstream: FakeUpstream, native_server: str, whole: bool
) -> None:
    """The provider is asked to keep nothing, and echoes `store: false`; openfusion keeps the response and serves
    follow-ups from it, so the object the client gets (whole, and in every stream event carrying it) says `store:
    true`, as does the copy it keeps. A client's own `store: false` is relayed as it is, and nothing is kept."""
    first = [Script(content="Created."), Script(content="Streamed.")]
    streamed = Script(raw_body=whole_response(store=False), raw_media_type="application/json") if whole else first[1]
    upstream.script("plain", first[0], streamed, Script(content="Not kept."))
    client = openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0)
    with client:
        created = client.responses.create(model="native/plain", input="Hi")
        with client.responses.stream(model="native/plain", input="Hi") as stream:
            carried = [(event.type, event.response.store) for event in stream if hasattr(event, "response")]
            final = stream.get_final_response()
        kept = [client.responses.retrieve(response.id).store for response in (created, final)]
        unkept = client.responses.create(model="native/plain", input="Hi", store=False)
        with pytest.raises(openai.NotFoundError) as not_kept:
            client.responses.retrieve(unkept.id)

    assert [call.body["store"] for call in upstream.calls_for("plain")] == [False, False, False]
    assert carried[0][0] == "response.created" and carried[-1][0] == "response.completed"
    said = {"created": created.store, "streamed": final.store, "events": {store for _, store in carried}, "kept": kept}
    assert said == {"created": True, "streamed": True, "events": {True}, "kept": [True, True]}
    assert unkept.store is False and not_kept.value.status_code == 404


@pytest.mark.parametrize(
    ("stream", "raw"),
    [
        (False, b'{"error": {"message": "overloaded", "type": "server_error", "code": "busy"}}'),
        (False, b'{"object": "response", "status": "completed", "output": []}'),
        (True, b'{"object": "response", "status": "completed", "output": []}'),
    ],
    ids=["error-object", "response-without-id", "streamed-response-without-id"],
)
def test_an_answer_without_a_response_id_is_relayed_and_not_kept(
    upstream: FakeUpstream, native_server: str, stream: bool, raw: bytes
) -> None:
    """A 200 that is no response with an id (an error object, a compatible server's response without one) cannot be
    kept for a follow-up: it is relayed as the provider sent it, never turned into a 500."""
    upstream.script("plain", Script(raw_body=raw, raw_media_type="application/json"))

    body = {"model": "native/plain", "input": "Hi", "stream": stream}
    response = httpx.post(f"{native_server}{RESPONSES}", json=body, timeout=30)

    assert response.status_code == 200, response.text
    if stream:
        kinds = [json.loads(line[6:])["type"] for line in response.text.splitlines() if line.startswith("data: ")]
        assert kinds[-1] == "response.completed"
    else:
        assert response.json() == json.loads(raw)


# ---- how a response ended is what it is kept as: OpenAI keeps a failed one too, and tells it by id --------------
FAILURE = {"code": "server_error", "message": "the model crashed"}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_native_response_that_failed_is_kept_and_read_back_failed(
    upstream: FakeUpstream, native_server: str, stream: bool
) -> None:
    """A provider's `status: "failed"` response is kept whether it came whole or as a stream ending in
    `response.failed`: `GET /v1/responses/{id}` tells it failed, as OpenAI's does, rather than a 404."""
    if stream:
        upstream.script("plain", Script(content="One two three.", error_event=FAILURE, reply_id="resp_failed"))
    else:
        answered_whole(upstream, whole_response("failed", id="resp_failed", error=FAILURE, output=[], usage=None))
    with openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0) as client:
        if stream:
            events = list(client.responses.create(model="native/plain", input="Hi", stream=True))
            assert events[-1].type == "response.failed"
            failed = events[-1].response  # type: ignore[union-attr]
        else:
            failed = client.responses.create(model="native/plain", input="Hi")
        kept = client.responses.retrieve("resp_failed")

    assert failed.id == "resp_failed" and failed.status == "failed" and failed.store is True
    assert kept.status == "failed" and kept.error is not None and kept.error.message == "the model crashed"


def test_a_native_stream_cut_off_before_its_end_is_kept_failed(upstream: FakeUpstream, native_server: str) -> None:
    """No terminal event: the response it began is kept as it ends for the client, failed, never as completed (nor in
    progress), without the text of the message still being written (tests/e2e/test_responses_native_breaks.py)."""
    upstream.script("plain", Script(content="One two three four.", end_stream_after=2, reply_id="resp_cut"))
    with httpx.stream("POST", f"{native_server}{RESPONSES}", timeout=30,
                      json={"model": "native/plain", "input": "Hi", "stream": True}) as response:  # fmt: skip
        kinds = [json.loads(line[6:])["type"] for line in response.iter_lines() if line.startswith("data: ")]
    with openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0) as client:
        kept = client.responses.retrieve("resp_cut")

    assert kinds[0] == "response.created" and kinds[-1] == "response.failed"
    assert kept.status == "failed" and kept.output == []


def test_a_translated_stream_that_failed_is_kept_and_read_back_failed(
    upstream: FakeUpstream, native_server: str
) -> None:
    """The same through a chat-completions provider: the stream openfusion ends with `response.failed` (here its
    provider broke off) keeps that response, as the one it completes would be."""
    upstream.script("plain", Script(chunks=["Half ", "an ", "answer"], cut_stream_after=1))
    with openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0) as client:
        events = list(client.responses.create(model="fake/plain", input="Hi", stream=True))
        failed = events[-1].response  # type: ignore[union-attr]
        kept = client.responses.retrieve(failed.id)

    assert events[-1].type == "response.failed" and failed.store is True
    assert kept.status == "failed" and kept.error is not None and kept.error.message == failed.error.message  # type: ignore[union-attr]
    assert "lost its connection" in kept.error.message


def test_a_failed_response_is_not_continued(upstream: FakeUpstream, native_server: str) -> None:
    """A kept response that failed can be read back, not continued: OpenAI refuses a `previous_response_id` naming
    one with a 400, and so does openfusion, before any call (the follow-up went on as if the failed turn had
    answered)."""
    upstream.script("plain", Script(chunks=["Half ", "an ", "answer"], cut_stream_after=1))
    with openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0) as client:
        failed = list(client.responses.create(model="fake/plain", input="Hi", stream=True))[-1].response  # type: ignore[union-attr]
        assert failed.status == "failed"
        upstream.reset()
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as refused:
                client.responses.create(model="fake/plain", input="Go on.", previous_response_id=failed.id,
                                        stream=stream)  # fmt: skip
            error = refused.value.body
            assert isinstance(error, dict) and error["type"] == "invalid_request_error", error
            assert error["param"] == "previous_response_id", error
            assert f"'{failed.id}'" in error["message"] and "failed" in error["message"], error

    assert upstream.calls == []


def _type_last_stream(status: str) -> bytes:
    """A stream as a server that writes openai-python's own event models writes it (vLLM's Responses API): each
    event's fields in the models' (alphabetical) order, `type` last, after a `response` object of any size."""
    response = {"id": "resp_typelast", "object": "response", "created_at": 1765000000, "instructions": "x" * 200,
                "model": "plain", "output": [], "status": "in_progress"}  # fmt: skip
    final = {**response, "status": status, "output": [MESSAGE] if status == "completed" else [],
             "usage": WHOLE_USAGE, "error": FAILURE if status == "failed" else None}  # fmt: skip
    delta = {"content_index": 0, "delta": "Sky is blue.", "item_id": "msg_whole", "logprobs": [], "output_index": 0}
    events = [
        {"response": response, "sequence_number": 0, "type": "response.created"},
        {**delta, "sequence_number": 1, "type": "response.output_text.delta"},
        {"response": final, "sequence_number": 2, "type": f"response.{status}"},
    ]
    lines = [(e["type"], json.dumps(e, separators=(",", ":"))) for e in events]  # compact, as pydantic writes JSON
    return "".join(f"event: {kind}\ndata: {data}\n\n" for kind, data in lines).encode()


@pytest.mark.parametrize("status", ["completed", "failed"])
def test_a_stream_whose_events_name_their_type_last_ends_as_it_says(
    upstream: FakeUpstream, native_server: str, status: str
) -> None:
    """Its terminal event is read wherever the event names its `type`: not taken for a stream cut short (an `error`
    event added after `response.completed`, the request recorded failed, nothing kept)."""
    upstream.script("plain", Script(raw_body=_type_last_stream(status), raw_media_type="text/event-stream"))
    with httpx.stream("POST", f"{native_server}{RESPONSES}", timeout=30,
                      json={"model": "native/plain", "input": "Hi", "stream": True}) as response:  # fmt: skip
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
        generation_id = response.headers["x-generation-id"]
    with openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0) as client:
        kept = client.responses.retrieve("resp_typelast")

    assert [event["type"] for event in events][-1] == f"response.{status}"
    assert kept.status == status and kept.store is True
    record = generation(native_server, generation_id)
    assert record["status"] == ("ok" if status == "completed" else "error"), record
    assert "the stream ended before" not in json.dumps([events, record])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_failed_response_is_recorded_failed_with_the_usage_it_reported(
    upstream: FakeUpstream, native_server: str, stream: bool
) -> None:
    """A provider bills what a failed response used, and says so in its `usage`: the record counts it, and says the
    request failed, whether the response came whole or ended a stream."""
    answered_whole(upstream, whole_response("failed", error=FAILURE, output=[], usage=WHOLE_USAGE))
    with httpx.stream("POST", f"{native_server}{RESPONSES}", timeout=30,
                      json={"model": "native/plain", "input": "Hi", "stream": stream}) as response:  # fmt: skip
        response.read()

    record = generation(native_server, response.headers["x-generation-id"])
    assert record["status"] == "error" and "the model crashed" in json.dumps(record), record
    assert (record["tokens_prompt"], record["tokens_completion"]) == (13, 9), record
