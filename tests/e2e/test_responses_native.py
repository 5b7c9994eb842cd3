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

from fakes.upstream import FakeUpstream, Script
from openfusion.settings import ProviderConfig

from .test_activity_wiring import generation

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
    # As sent, but the model's upstream name; openfusion's own `models` list is not the provider's business.
    assert call.body == {"model": "plain", "input": "Hi", "instructions": "Be brief.", "include": ["x"],
                         "store": True, "plugins": [{"id": "web"}]}  # fmt: skip
    assert call.headers["authorization"] == "Bearer sk-provider-secret"
    record = generation(native_server, response.headers["x-generation-id"])
    assert record["api_type"] == "responses" and (record["tokens_prompt"], record["tokens_completion"]) == (11, 7)
    assert record["calls"][0]["provider_name"] == "native"


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


def test_a_native_stream_cut_short_ends_with_an_error(upstream: FakeUpstream, native_server: str) -> None:
    upstream.script("plain", Script(content="One two three four.", end_stream_after=2))

    with httpx.stream("POST", f"{native_server}{RESPONSES}", timeout=30,
                      json={"model": "native/plain", "input": "Hi", "stream": True}) as response:  # fmt: skip
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        generation_id = response.headers["x-generation-id"]

    events = [json.loads(line[6:]) for line in lines]
    last = events[-1]
    assert last["type"] == "error" and last["code"] == "upstream_invalid_response"
    assert "response.completed" not in "".join(lines)
    numbers = [event["sequence_number"] for event in events]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # the error event comes next in order
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
