"""Tests of the fake upstream itself, served by real uvicorn."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from httpx_sse import connect_sse

from .server import serve_in_thread
from .upstream import DEFAULT_USAGE, FakeUpstream, Script, wait_until

MESSAGES = [{"role": "user", "content": "hi"}]
WEATHER_CALL = {"id": "call_w", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeUpstream, str]]:
    upstream = FakeUpstream()
    with serve_in_thread(upstream.app) as url:
        yield upstream, url


@pytest.fixture
def fake(served: tuple[FakeUpstream, str]) -> FakeUpstream:
    served[0].reset()
    return served[0]


@pytest.fixture
def http(served: tuple[FakeUpstream, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[1] + "/v1", timeout=5) as client:
        yield client


@pytest.fixture
def sdk(served: tuple[FakeUpstream, str]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=served[1] + "/v1", api_key="sk-test", max_retries=0, timeout=5) as client:
        yield client


def sse_data(http: httpx.Client, body: dict) -> list[str]:
    with connect_sse(http, "POST", "/chat/completions", json=body) as source:
        return [event.data for event in source.iter_sse()]


def test_non_stream_default_reply(fake: FakeUpstream, http: httpx.Client) -> None:
    r = http.post("/chat/completions", json={"model": "panel/a", "messages": MESSAGES})
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "panel/a"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "Answer from panel/a."}
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"] == DEFAULT_USAGE
    [call] = fake.calls
    assert (call.model, call.stream, call.body["messages"]) == ("panel/a", False, MESSAGES)
    assert "authorization" not in call.headers
    assert call.finished is not None
    assert call.finished >= call.started
    assert not call.disconnected


def test_scripted_content_usage_cost_and_model(fake: FakeUpstream, sdk: openai.OpenAI) -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    fake.script("m", Script(content="Scripted.", usage=usage, cost=0.0012, response_model="m-2024"))
    resp = sdk.chat.completions.create(model="m", messages=MESSAGES)
    assert resp.choices[0].message.content == "Scripted."
    assert resp.model == "m-2024"
    assert resp.usage is not None
    assert resp.usage.total_tokens == 8
    assert resp.usage.model_extra == {"cost": 0.0012}
    assert fake.calls_for("m")[0].headers["authorization"] == "Bearer sk-test"


def test_script_queue_consumed_per_call_last_repeats(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.script("m", Script(status=500), Script(content="ok"))
    statuses = [http.post("/chat/completions", json={"model": "m"}).status_code for _ in range(3)]
    assert statuses == [500, 200, 200]
    assert len(fake.calls_for("m")) == 3
    assert fake.calls_for("other") == []


def test_stream_deltas_are_separate_events_with_usage_chunk(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.script("m", Script(content="Hello streaming world"))
    body = {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    data = sse_data(http, body)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:4]]
    assert contents == ["Hello ", "streaming ", "world"]
    assert chunks[4]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert chunks[5]["choices"] == []
    assert chunks[5]["usage"] == DEFAULT_USAGE
    assert all(c["usage"] is None for c in chunks[:5])
    assert fake.calls[0].stream


def test_stream_without_include_usage_has_no_usage_chunk(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.script("m", Script(chunks=["Hel", "lo"], chunk_interval_s=0.05))
    started = time.monotonic()
    data = sse_data(http, {"model": "m", "stream": True})
    assert time.monotonic() - started >= 0.05
    chunks = [json.loads(d) for d in data[:-1]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "Hel", "lo", None]
    assert all("usage" not in c and c["choices"] for c in chunks)


def test_error_status_retry_after_and_body(fake: FakeUpstream, http: httpx.Client, sdk: openai.OpenAI) -> None:
    fake.script("m", Script(status=429, retry_after="7", error_message="slow down"))
    r = http.post("/chat/completions", json={"model": "m", "stream": True})
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"
    assert r.json() == {"error": {"message": "slow down", "type": "rate_limit_error", "code": 429}}
    with pytest.raises(openai.RateLimitError) as err:
        sdk.chat.completions.create(model="m", messages=MESSAGES)
    assert err.value.status_code == 429
    assert "slow down" in err.value.message


def test_invalid_json_and_raw_body(fake: FakeUpstream, http: httpx.Client) -> None:
    r = http.post("/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "error" in r.json()
    fake.script("m", Script(raw_body=b'{"choices": [', status=200))
    r = http.post("/chat/completions", json={"model": "m"})
    assert (r.status_code, r.content) == (200, b'{"choices": [')


def test_models_lists_scripted_models(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.script("b", Script())
    fake.script("a", Script())
    data = http.get("/models").json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["a", "b"]


def test_tool_calls_non_stream(fake: FakeUpstream, sdk: openai.OpenAI) -> None:
    fake.script("m", Script(tool_calls=[WEATHER_CALL]))
    resp = sdk.chat.completions.create(model="m", messages=MESSAGES)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [tc] = choice.message.tool_calls or []
    assert tc.id == "call_w"
    assert tc.function.name == "get_weather"
    assert json.loads(tc.function.arguments) == {"city": "Paris"}


def test_tool_calls_stream_reassembled(fake: FakeUpstream, sdk: openai.OpenAI) -> None:
    second = {"function": {"name": "get_time", "arguments": '{"timezone": "Europe/Paris"}'}}
    fake.script("m", Script(tool_calls=[WEATHER_CALL, second]))
    calls: dict[int, dict[str, str]] = {}
    finish = None
    with sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True) as stream:
        for chunk in stream:
            if not chunk.choices:
                continue
            finish = chunk.choices[0].finish_reason or finish
            for tc in chunk.choices[0].delta.tool_calls or []:
                acc = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                acc["id"] += tc.id or ""
                acc["name"] += (tc.function and tc.function.name) or ""
                acc["arguments"] += (tc.function and tc.function.arguments) or ""
    assert finish == "tool_calls"
    assert calls[0] == {"id": "call_w", "name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert calls[1]["name"] == "get_time"
    assert json.loads(calls[1]["arguments"]) == {"timezone": "Europe/Paris"}


def test_cut_stream_raises_connection_error_in_sdk(fake: FakeUpstream, sdk: openai.OpenAI) -> None:
    fake.script("m", Script(content="one two three four", cut_stream_after=2))
    contents: list[str] = []
    stream = sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    # The connection drops mid chunked body, so httpx raises RemoteProtocolError, wrapped by the SDK.
    with stream, pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            contents.append(chunk.choices[0].delta.content or "")
    assert contents == ["", "one ", "two "]
    wait_until(lambda: fake.calls[0].finished is not None)
    assert not fake.calls[0].disconnected


def test_a_stream_can_end_cleanly_before_it_finishes(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.script("m", Script(content="one two three", end_stream_after=2))
    data = sse_data(http, {"model": "m", "stream": True})
    chunks = [json.loads(d) for d in data]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "one ", "two "]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks) and "[DONE]" not in data
    wait_until(lambda: fake.calls[0].finished is not None)
    assert fake.calls[0].ended_early and not fake.calls[0].disconnected


def test_a_stream_can_end_with_an_error_event(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.script("m", Script(content="one two", error_event={"message": "overloaded", "code": 502}))
    data = sse_data(http, {"model": "m", "stream": True})
    assert json.loads(data[-1])["error"] == {"message": "overloaded", "code": 502}
    assert all(json.loads(d).get("choices", [{}])[0].get("finish_reason") is None for d in data[:-1])
    assert "[DONE]" not in data and fake.calls[0].ended_early


def test_a_json_body_can_trickle_spaces(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.script("m", Script(trickle_s=0.05))
    with http.stream("POST", "/chat/completions", json={"model": "m"}) as r:
        assert r.status_code == 200
        received = b""
        for piece in r.iter_raw():
            received += piece
            if len(received) >= 3:
                break
    assert received.strip() == b""
    wait_until(lambda: fake.calls[0].disconnected)
    assert fake.calls[0].trickled >= 3


def test_a_stream_can_trickle_comments_after_its_tokens(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.script("m", Script(chunks=["first"], trickle_s=0.05))
    with http.stream("POST", "/chat/completions", json={"model": "m", "stream": True}) as r:
        lines = r.iter_lines()
        data = [next(lines) for _ in range(4)]  # role, first token, and blank lines between
        comments = [line for line in (next(lines) for _ in range(6)) if line.startswith(":")]
    assert '"content":"first"' in "".join(data) and len(comments) >= 2
    wait_until(lambda: fake.calls[0].disconnected)
    assert fake.calls[0].trickled >= 2


def test_client_closing_slow_stream_marks_call_disconnected(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.script("m", Script(chunks=["x"] * 50, chunk_interval_s=0.1))
    with http.stream("POST", "/chat/completions", json={"model": "m", "stream": True}) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    call = fake.calls[0]
    wait_until(lambda: call.disconnected, timeout=2.0)
    assert call.finished is not None


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_gate_holds_an_answer_until_the_test_opens_it(fake: FakeUpstream, http: httpx.Client, stream: bool) -> None:
    gate = threading.Event()
    fake.script("m", Script(content="Held.", gate=gate))
    with ThreadPoolExecutor(1) as pool:
        if stream:
            answer = pool.submit(sse_data, http, {"model": "m", "stream": True})
        else:
            answer = pool.submit(lambda: http.post("/chat/completions", json={"model": "m"}).json())
        wait_until(lambda: bool(fake.calls) and fake.calls[0].held)
        held = answer.done()
        gate.set()
        result = answer.result()
    assert held is False  # nothing came back while the gate was shut
    if stream:
        assert "Held." in "".join(result)
    else:
        assert result["choices"][0]["message"]["content"] == "Held."
    assert fake.calls[0].held is False


def test_delays_overlap_between_concurrent_calls(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.default = Script(delay_s=0.3)  # the `fake` fixture's reset() restores it
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda m: http.post("/chat/completions", json={"model": m}), "abc"))
    assert [r.status_code for r in results] == [200, 200, 200]
    # Overlap told by the calls' own times (each began before any ended), not by a wall-clock budget a loaded machine
    # can outlast.
    calls = fake.calls
    assert all(c.finished is not None and c.finished - c.started >= 0.29 for c in calls)
    assert max(c.started for c in calls) < min(c.finished or 0 for c in calls)


def test_reject_response_format(fake: FakeUpstream, sdk: openai.OpenAI) -> None:
    fake.script("m", Script(reject_response_format={"json_schema"}))
    schema = {"name": "verdict", "schema": {"type": "object"}}
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(
            model="m", messages=MESSAGES, response_format={"type": "json_schema", "json_schema": schema}
        )
    assert "json_schema" in err.value.message
    resp = sdk.chat.completions.create(model="m", messages=MESSAGES, response_format={"type": "json_object"})
    assert resp.choices[0].message.content == "Answer from m."


def test_a_whole_answer_can_be_cut_midway(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.script("m", Script(content="partial", cut_stream_after=1))

    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/chat/completions", json={"model": "m", "messages": MESSAGES})

    assert fake.calls_for("m")[0].fault == "cut"


def test_a_whole_answer_can_drip(fake: FakeUpstream, http: httpx.Client) -> None:
    fake.script("m", Script(chunks=["d", "r", "i", "p"], chunk_interval_s=0.05))

    started = time.monotonic()
    body = http.post("/chat/completions", json={"model": "m", "messages": MESSAGES}).json()

    assert body["choices"][0]["message"]["content"] == "drip"
    assert fake.calls_for("m")[0].fault == "drip"  # sent in pieces, the pauses between them taken
    assert time.monotonic() - started >= 0.15


def test_the_fault_put_in_an_answer_is_recorded(fake: FakeUpstream, http: httpx.Client) -> None:
    for model, script in [("s", Script(status=429)), ("r", Script(raw_body=b"{not json")), ("p", Script())]:
        fake.script(model, script)
        http.post("/chat/completions", json={"model": model, "messages": MESSAGES})

    assert [(c.model, c.fault) for c in fake.calls] == [("s", "status 429"), ("r", "raw body"), ("p", None)]
