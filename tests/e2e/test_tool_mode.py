"""Fusion as a server tool: the caller's own model calls fusion; openfusion runs it and calls the model again."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest

from fakes.upstream import FakeUpstream, Script
from openfusion.pipeline.tool_mode import MAX_OUTER_CALLS

from .conftest import ANALYSIS

CHAT = "/v1/chat/completions"
QUESTION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Should we shard the database?"},
]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
                                                                                   "properties": {}}}}  # fmt: skip


def fusion_tool(**parameters: Any) -> dict[str, Any]:
    return {"type": "openrouter:fusion", "parameters": {"analysis_models": ["fake/a", "fake/b"],
                                                         "model": "fake/judge", **parameters}}  # fmt: skip


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"function": {"name": name, "arguments": arguments}}


def ask(url: str, **body: Any) -> Any:
    body.setdefault("messages", QUESTION)
    with openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as sdk:
        result = sdk.chat.completions.create(model="fake/outer", **body)
        return list(result) if body.get("stream") else result


def tool_results(upstream: FakeUpstream, model: str = "outer") -> list[dict[str, Any]]:
    return [json.loads(m["content"]) for c in upstream.calls_for(model) for m in c.body["messages"]
            if m["role"] == "tool"]  # fmt: skip


def test_the_outer_model_calls_fusion_and_answers_from_it(upstream: FakeUpstream, server: str) -> None:
    upstream.script("outer", Script(tool_calls=[call("fusion", prompt="Shard or not, for 2 TB of orders?")]),
                    Script(content="Do not shard yet."))  # fmt: skip
    upstream.script("a", Script(content="Shard by tenant."))

    response = ask(server, tools=[fusion_tool()])

    assert response.choices[0].message.content == "Do not shard yet."
    assert response.choices[0].message.tool_calls is None
    first, second = upstream.calls_for("outer")
    assert {t["function"]["name"] for t in first.body["tools"]} == {"fusion"}
    assert all(t["type"] == "function" for t in first.body["tools"])  # the server tool never reaches a provider
    # The panel got the prompt (and the outer system message), not the conversation.
    assert upstream.calls_for("a")[0].body["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Shard or not, for 2 TB of orders?"},
    ]
    [result] = tool_results(upstream)
    assert result["status"] == "ok" and result["analysis"] == ANALYSIS
    assert {r["model"]: r["content"] for r in result["responses"]}["fake/a"] == "Shard by tenant."
    assert second.body["messages"][-2]["tool_calls"][0]["function"]["name"] == "fusion"
    fusion = response.model_extra["fusion"]
    assert fusion["mode"] == "tool" and fusion["invoked"] is True and fusion["outer"]["calls"] == 2
    assert [p["model"] for p in fusion["panel"]] == ["fake/a", "fake/b"]
    assert response.usage.model_extra["server_tool_use_details"]["tool_calls_executed"] == 1
    # Summed over both outer calls, two panelists and the judge.
    assert response.usage.total_tokens == 18 * 5


def test_tool_choice_required_forces_the_run(upstream: FakeUpstream, server: str) -> None:
    forced = {"type": "function", "function": {"name": "fusion"}}
    for choice in ({"tool_choice": "required"}, {"extra_body": {"tool_choice": {"type": "openrouter:fusion"}}}):
        upstream.reset()
        upstream.script("judge", Script(content=json.dumps(ANALYSIS)))
        upstream.script("outer", Script(tool_calls=[call("fusion", prompt="q")]), Script(content="Done."))

        response = ask(server, tools=[fusion_tool()], **choice)

        first, second = upstream.calls_for("outer")
        assert first.body["tool_choice"] == forced
        assert second.body.get("tool_choice") != forced  # once fusion ran, the model is free to answer
        assert response.choices[0].message.content == "Done."


def test_without_a_call_the_model_answers_alone(upstream: FakeUpstream, server: str) -> None:
    upstream.script("outer", Script(content="Hello!"))

    response = ask(server, tools=[fusion_tool()], messages=[{"role": "user", "content": "hi"}])

    assert response.choices[0].message.content == "Hello!"
    assert response.model_extra["fusion"]["invoked"] is False
    assert upstream.calls_for("a") == []


def test_client_tool_calls_are_returned_never_run(upstream: FakeUpstream, server: str) -> None:
    upstream.script("outer", Script(tool_calls=[call("get_weather", city="Oslo")]))

    response = ask(server, tools=[WEATHER, fusion_tool()])

    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in choice.message.tool_calls] == ["get_weather"]
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Oslo"}
    assert len(upstream.calls_for("outer")) == 1 and upstream.calls_for("a") == []
    names = {t["function"]["name"] for t in upstream.calls_for("outer")[0].body["tools"]}
    assert names == {"get_weather", "fusion"}


def test_fusion_then_a_client_tool_in_the_same_request(upstream: FakeUpstream, server: str) -> None:
    upstream.script("outer", Script(tool_calls=[call("fusion", prompt="q")]),
                    Script(tool_calls=[call("get_weather", city="Rome")]))  # fmt: skip

    chunks = ask(server, tools=[WEATHER, fusion_tool()], stream=True)

    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [c.function.name for c in calls] == ["get_weather"]  # fusion's own call never shows
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert chunks[-1].model_extra["fusion"]["invoked"] is True


def test_a_second_fusion_call_is_capped(upstream: FakeUpstream, server: str) -> None:
    upstream.script("outer", Script(tool_calls=[call("fusion", prompt="one"), call("fusion", prompt="two")]),
                    Script(content="Answer."))  # fmt: skip

    response = ask(server, tools=[fusion_tool()])

    first, second = tool_results(upstream)
    assert first["status"] == "ok"
    assert second["status"] == "error" and second["failure_reason"] == "fusion_invocation_capped"
    assert len(upstream.calls_for("a")) == 1  # one fusion run only
    assert response.choices[0].message.content == "Answer."


def test_a_failed_panel_is_a_tool_error_not_an_http_error(upstream: FakeUpstream, server: str) -> None:
    upstream.script("outer", Script(tool_calls=[call("fusion", prompt="q")]), Script(content="From my own knowledge."))
    for model in "ab":
        upstream.script(model, Script(status=429, retry_after="0"))

    response = ask(server, tools=[fusion_tool()])

    [result] = tool_results(upstream)
    assert result["status"] == "error" and result["failure_reason"] == "rate_limited"
    assert response.choices[0].message.content == "From my own knowledge."
    assert response.model_extra["fusion"]["status"] == "error"


@pytest.mark.usefixtures("loopback_only")
def test_the_tool_result_lists_failed_models_and_sources(
    upstream: FakeUpstream, fake_upstream: tuple[FakeUpstream, str], start_server: Any
) -> None:
    page = f"{fake_upstream[1]}/v1/models"  # a page the panelist reads (any loopback URL will do)
    upstream.script("outer", Script(tool_calls=[call("fusion", prompt="q")]), Script(content="Done."))
    upstream.script("a", Script(tool_calls=[call("web_fetch", url=page)]), Script(content="From a."))
    upstream.script("b", Script(status=429, retry_after="0", error_message="slow down"))
    upstream.script("c", Script(delay_s=30))
    tool = fusion_tool(analysis_models=["fake/a", "fake/b", "fake/c"], tools=["web_fetch"], panel_timeout_s=1)

    with start_server(research={"fetch": {"allow_private": ["127.0.0.0/8"]}}) as url:
        response = ask(url, tools=[tool])

    [result] = tool_results(upstream)
    assert result["status"] == "ok"  # two failed, one answered
    assert result["failed_models"] == [
        {"model": "fake/b", "error": result["failed_models"][0]["error"], "status_code": 429},
        {"model": "fake/c", "error": result["failed_models"][1]["error"]},  # a timeout has no HTTP status
    ]
    assert "slow down" in result["failed_models"][0]["error"]
    assert "panel_timeout_s" in result["failed_models"][1]["error"]
    assert [s["url"] for s in result["sources"]] == [page]
    assert [s["url"] for s in response.model_extra["fusion"]["sources"]] == [page]


def test_the_tool_result_has_no_failed_models_when_none_failed(upstream: FakeUpstream, server: str) -> None:
    upstream.script("outer", Script(tool_calls=[call("fusion", prompt="q")]), Script(content="Done."))

    ask(server, tools=[fusion_tool()])

    [result] = tool_results(upstream)
    assert "failed_models" not in result and result["sources"] == []


def test_a_failed_judge_leaves_the_analysis_out_of_the_tool_result(upstream: FakeUpstream, server: str) -> None:
    upstream.script("outer", Script(tool_calls=[call("fusion", prompt="q")]), Script(content="Done."))
    upstream.script("judge", Script(status=400, error_message="bad judge"))

    response = ask(server, tools=[fusion_tool()])

    [result] = tool_results(upstream)
    assert len(upstream.calls_for("judge")) == 1  # the fault happened
    assert result["status"] == "ok" and "analysis" not in result  # degraded, as OpenRouter's analyst does
    assert [r["model"] for r in result["responses"]] == ["fake/a", "fake/b"]
    assert response.model_extra["fusion"]["judge"]["failure_reason"] == "judge_upstream_error"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_the_last_outer_call_may_call_no_tool(upstream: FakeUpstream, server: str, stream: bool) -> None:
    # A model that calls fusion every time: fusion runs once, and the last allowed call is told to answer.
    upstream.script("outer", Script(content="Thinking.", tool_calls=[call("fusion", prompt="q")]))

    result = ask(server, tools=[WEATHER, fusion_tool()], stream=stream)

    calls = upstream.calls_for("outer")
    assert len(calls) == MAX_OUTER_CALLS
    assert [c.body.get("tool_choice") for c in calls] == [None] * (MAX_OUTER_CALLS - 1) + ["none"]
    assert all({t["function"]["name"] for t in c.body["tools"]} == {"get_weather", "fusion"} for c in calls)
    assert len(upstream.calls_for("a")) == 1  # fusion itself ran once; the other calls were capped
    if stream:
        assert not [c for c in result if c.choices and c.choices[0].delta.tool_calls]
    else:
        assert result.choices[0].message.tool_calls is None  # fusion's own call never reaches the client


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_last_outer_call_of_fusion_alone_ends_as_an_answer_on_every_surface(
    upstream: FakeUpstream, server: str, stream: bool
) -> None:
    """A model that calls fusion even when told to call no tool: its call is dropped, and the response must not say
    that tool calls follow (an agent would wait for calls that are not there)."""
    upstream.script("outer", Script(content="Thinking.", tool_calls=[call("fusion", prompt="q")]))
    question = [{"role": "user", "content": "Shard?"}]

    body = {"model": "fake/outer", "messages": question, "stream": stream, "tools": [fusion_tool()]}
    chat = httpx.post(f"{server}{CHAT}", json=body, timeout=20)
    messages = httpx.post(f"{server}/v1/messages", json={**body, "max_tokens": 100}, timeout=20)

    assert len(upstream.calls_for("outer")) == 2 * MAX_OUTER_CALLS
    if stream:
        finishes = [c["choices"][0]["finish_reason"] for c in _sse_data(chat.text) if c.get("choices")]
        assert [f for f in finishes if f] == ["stop"]
        deltas = [e["delta"] for e in _sse_data(messages.text) if e.get("type") == "message_delta"]
        assert [d["stop_reason"] for d in deltas] == ["end_turn"]
        assert '"tool_use"' not in messages.text
    else:
        assert chat.json()["choices"][0]["finish_reason"] == "stop"
        assert messages.json()["stop_reason"] == "end_turn"
        assert [b["type"] for b in messages.json()["content"]] == ["text"]


def _sse_data(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_an_outer_model_that_refuses_temperature_still_answers(
    upstream: FakeUpstream, server: str, stream: bool
) -> None:
    refusing = Script(tool_calls=[call("fusion", prompt="q")], reject_parameters={"temperature"})
    # The refused call takes one script of the queue: the same call again, then the answer.
    upstream.script("outer", refusing, refusing, Script(content="Done.", reject_parameters={"temperature"}))

    result = ask(server, tools=[fusion_tool()], temperature=0.3, stream=stream)

    sent = [c.body.get("temperature") for c in upstream.calls_for("outer")]
    assert sent == [0.3, None, None]  # refused once, then never sent again
    final = result[-1] if stream else result
    text = (
        "".join(c.choices[0].delta.content or "" for c in result if c.choices)
        if stream
        else (result.choices[0].message.content)
    )
    assert text == "Done."
    assert final.model_extra["fusion"]["outer"]["unsupported_parameters"] == ["temperature"]


def test_streaming_relays_the_outer_answer_with_keepalives(upstream: FakeUpstream, start_server: Any) -> None:
    upstream.script("outer", Script(tool_calls=[call("fusion", prompt="q")]),
                    Script(chunks=["Not ", "yet."], chunk_interval_s=0.05))  # fmt: skip
    upstream.script("a", Script(delay_s=0.6))
    body = {"model": "fake/outer", "messages": QUESTION, "tools": [fusion_tool()], "stream": True}

    with start_server(keepalive_interval_s=0.2) as url:
        text = httpx.post(f"{url}{CHAT}", json=body, timeout=20).text

    assert text.count(": OPENFUSION PROCESSING") >= 3
    payloads = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    content = [p["choices"][0]["delta"].get("content") for p in payloads if p["choices"]]
    assert [c for c in content if c] == ["Not ", "yet."]
    assert payloads[-1]["usage"]["server_tool_use_details"]["tool_calls_executed"] == 1
    assert all(p["id"] == payloads[0]["id"] for p in payloads)


def answer_both_ways(upstream: FakeUpstream, url: str, *scripts: Script, **body: Any) -> list[tuple[Any, Any]]:
    """(content, tool call names) of the same exchange asked without and with streaming."""
    answers = []
    for stream in (False, True):
        upstream.reset()
        upstream.script("judge", Script(content=json.dumps(ANALYSIS)))
        upstream.script("outer", *scripts)
        result = ask(url, stream=stream, **body)
        if stream:
            content = "".join(c.choices[0].delta.content or "" for c in result if c.choices)
            calls = [tc.function.name for c in result if c.choices for tc in c.choices[0].delta.tool_calls or []]
        else:
            content = result.choices[0].message.content
            calls = [tc.function.name for tc in result.choices[0].message.tool_calls or []]
        assert len(upstream.calls_for("a")) == 1  # fusion ran, after the text written before its call
        answers.append((content, calls))
    return answers


def test_text_written_before_the_fusion_call_is_in_both_answers(upstream: FakeUpstream, server: str) -> None:
    before = Script(content="Let me ask the panel.", tool_calls=[call("fusion", prompt="q")])

    plain, streamed = answer_both_ways(upstream, server, before, Script(content="Do not shard yet."),
                                       tools=[fusion_tool()])  # fmt: skip

    assert plain == streamed == ("Let me ask the panel.\n\nDo not shard yet.", [])


def test_text_and_a_client_tool_call_after_fusion_are_the_same_both_ways(upstream: FakeUpstream, server: str) -> None:
    before = Script(content="Checking.", tool_calls=[call("fusion", prompt="q")])
    after = Script(content="Now the weather.", tool_calls=[call("get_weather", city="Oslo")])

    plain, streamed = answer_both_ways(upstream, server, before, after, tools=[WEATHER, fusion_tool()])

    assert plain == streamed == ("Checking.\n\nNow the weather.", ["get_weather"])


def test_the_judge_defaults_to_the_outer_model(upstream: FakeUpstream, server: str) -> None:
    upstream.script("outer", Script(tool_calls=[call("fusion", prompt="q")]), Script(content=json.dumps(ANALYSIS)),
                    Script(content="Final."))  # fmt: skip
    tool = {"type": "fusion", "parameters": {"analysis_models": ["fake/a"]}}

    response = ask(server, tools=[tool])

    assert response.choices[0].message.content == "Final."
    assert response.model_extra["fusion"]["judge"]["model"] == "fake/outer"
    assert upstream.calls_for("outer")[1].body["response_format"]["type"] == "json_schema"


def test_bad_tool_parameters_are_400(server: str) -> None:
    bad = {"type": "openrouter:fusion", "parameters": {"analysis_models": ["fusion/trio"]}}
    response = httpx.post(f"{server}{CHAT}", json={"model": "fake/outer", "messages": QUESTION, "tools": [bad]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tools[0].parameters.analysis_models[0]"


# A function of the client's own named `fusion`, beside the server tool, on each surface: (path, body, error param).
_OWN_FUSION = {"type": "object", "properties": {}}
NAMED_FUSION = [
    (CHAT, {"model": "fake/outer", "messages": QUESTION,
            "tools": [fusion_tool(), {"type": "function", "function": {"name": "fusion", "parameters": _OWN_FUSION}}]},
     "tools[1].function.name"),
    ("/v1/responses", {"model": "fake/outer", "input": "Shard?",
                       "tools": [{"type": "web_search"}, fusion_tool(),
                                 {"type": "function", "name": "fusion", "parameters": _OWN_FUSION}]},
     "tools[2].name"),
    ("/v1/messages", {"model": "fake/outer", "max_tokens": 100, "messages": [{"role": "user", "content": "Shard?"}],
                      "tools": [{"name": "fusion", "input_schema": _OWN_FUSION}, fusion_tool()]},
     "tools.0.name"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "param"), NAMED_FUSION, ids=["chat", "responses", "messages"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_function_of_the_clients_named_fusion_beside_the_server_tool_is_400(
    upstream: FakeUpstream, server: str, path: str, body: dict[str, Any], param: str, stream: bool
) -> None:
    """The outer model would be offered two functions named `fusion`, and its call of the client's would run a
    panel (and be billed) instead of going back to the client: the request is refused before any call."""
    upstream.script("outer", Script(tool_calls=[call("fusion", prompt="q")]), Script(content="Done."))

    response = httpx.post(f"{server}{path}", json={**body, "stream": stream}, timeout=20)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    if path == "/v1/messages":  # Anthropic's errors carry no param: the message names the field
        assert error["type"] == "invalid_request_error" and param in error["message"]
    else:
        assert (error["code"], error["param"]) == ("invalid_request", param)
    assert "fusion" in error["message"]
    assert upstream.calls == []


# ---- the fusion slug inside an agent loop -----------------------------------------------------------

LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
TURN = [{"role": "user", "content": "What is our churn?"}]
STEP = [
    *TURN,
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "churn=4%"},
]  # fmt: skip


def slug(url: str, messages: list[dict[str, Any]], **body: Any) -> httpx.Response:
    payload = {"model": "fusion/trio", "messages": messages, "tools": [LOOKUP], **body}
    return httpx.post(f"{url}{CHAT}", json=payload, timeout=20)


def test_an_agent_loop_fans_out_once_per_user_turn(upstream: FakeUpstream, server: str) -> None:
    upstream.script("synth", Script(tool_calls=[call("lookup")]), Script(content="Churn is 4%."))

    first = slug(server, TURN)
    second = slug(server, STEP)

    assert first.json()["choices"][0]["finish_reason"] == "tool_calls"  # the synthesizer may call client tools
    assert first.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    assert "tools" not in upstream.calls_for("a")[0].body or all(
        t["function"]["name"] != "lookup" for t in upstream.calls_for("a")[0].body["tools"]
    )  # the panel never gets the client's tools
    assert second.json()["choices"][0]["message"]["content"] == "Churn is 4%."
    assert second.json()["fusion"]["panel_source"] == "cached"
    assert [len(upstream.calls_for(m)) for m in ("a", "b", "c", "judge")] == [1, 1, 1, 1]  # no second fan-out
    synth = upstream.calls_for("synth")[1].body
    assert "Answer from a." in synth["messages"][0]["content"]  # the turn's answers, reused
    assert synth["messages"][-1] == {"role": "tool", "tool_call_id": "c1", "content": "churn=4%"}
    assert second.json()["usage"]["total_tokens"] == 18  # only the synthesizer was paid for this step


@pytest.mark.parametrize(
    ("changed", "source"),
    [
        ({"reasoning": {"effort": "high"}}, "fresh"),  # the request's own reasoning: the panel's too
        ({"plugins": [{"id": "fusion", "temperature": 1.5}]}, "fresh"),
        ({"plugins": [{"id": "fusion", "analysis_models": ["fake/a", "fake/b"]}]}, "fresh"),
        ({"plugins": [{"id": "fusion", "expose": True, "synth_timeout_s": 30}]}, "cached"),  # the synthesizer's alone
    ],
)
def test_an_agent_step_that_changes_how_the_panel_works_gets_a_fresh_panel(
    upstream: FakeUpstream, server: str, changed: dict[str, Any], source: str
) -> None:
    slug(server, TURN)
    response = slug(server, STEP, **changed)

    assert response.json()["fusion"]["panel_source"] == source
    assert len(upstream.calls_for("a")) == (2 if source == "fresh" else 1)
    if source == "fresh":  # and the step's own panel is the turn now: the next step under its settings reuses it
        assert slug(server, STEP, **changed).json()["fusion"]["panel_source"] == "cached"
        assert len(upstream.calls_for("a")) == 2


def test_without_a_cached_turn_the_synthesizer_answers_alone(upstream: FakeUpstream, server: str) -> None:
    response = slug(server, STEP)

    assert response.json()["fusion"]["panel_source"] == "skipped"
    assert upstream.calls_for("a") == [] and len(upstream.calls_for("synth")) == 1
    assert upstream.calls_for("synth")[0].body["messages"] == STEP


def test_refire_always_restores_a_fresh_panel(upstream: FakeUpstream, server: str) -> None:
    slug(server, TURN)
    response = slug(server, STEP, plugins=[{"id": "fusion", "refire": "always"}])

    assert response.json()["fusion"]["panel_source"] == "fresh"
    assert len(upstream.calls_for("a")) == 2
    # The panel saw the agent's tool exchange as text, since it is not offered those tools.
    panel_messages = upstream.calls_for("a")[1].body["messages"]
    assert panel_messages[-1] == {"role": "user", "content": "[tool result]\nchurn=4%"}


REFUSAL = "Invalid parameter: messages with role 'tool' must be a response to a preceding message with 'tool_calls'."


def test_the_outer_providers_refusal_reaches_the_client_as_its_own_4xx(upstream: FakeUpstream, server: str) -> None:
    """The caller's own model refusing the conversation is the caller's to fix: its 400 is passed on, as a
    pass-through passes it, in each surface's own error shape, not turned into a 502 "upstream error"."""
    refused = Script(status=400, error_message=REFUSAL)
    upstream.script("outer", refused, refused, refused)

    with openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as sdk:
        with pytest.raises(openai.BadRequestError) as chat:
            sdk.chat.completions.create(model="fake/outer", messages=QUESTION, tools=[fusion_tool()])  # type: ignore[list-item]
        with pytest.raises(openai.BadRequestError) as responses:
            sdk.responses.create(model="fake/outer", input="Shard?", tools=[fusion_tool()])  # type: ignore[list-item]
    with anthropic.Anthropic(base_url=server, api_key="k", max_retries=0) as claude, \
            pytest.raises(anthropic.BadRequestError) as messages:  # fmt: skip
        claude.messages.create(model="fake/outer", max_tokens=100, messages=[{"role": "user", "content": "Shard?"}],
                               tools=[fusion_tool()])  # type: ignore[list-item]  # fmt: skip

    for error in (chat.value, responses.value):
        assert error.status_code == 400 and error.type == "invalid_request_error"
        assert REFUSAL in error.message
    assert messages.value.status_code == 400
    assert messages.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert REFUSAL in messages.value.body["error"]["message"]  # type: ignore[index]
    assert upstream.calls_for("a") == []  # refused before any panel ran


def test_a_refusal_in_a_stream_says_what_the_provider_said(upstream: FakeUpstream, server: str) -> None:
    """A stream has begun (its first line is sent at once): the refusal is its error chunk, with the provider's
    status and words, as a refusal of the client's request rather than a provider outage."""
    upstream.script("outer", Script(status=400, error_message=REFUSAL))
    body = {"model": "fake/outer", "messages": QUESTION, "tools": [fusion_tool()], "stream": True}

    text = httpx.post(f"{server}{CHAT}", json=body, timeout=20).text

    [error] = [p["error"] for p in _sse_data(text) if "error" in p]
    assert error["type"] == "invalid_request_error" and REFUSAL in error["message"]
    assert error["metadata"]["upstream_status"] == 400 and error["metadata"]["error_type"] == "invalid_request"


@pytest.mark.parametrize("status", [500, 503])
def test_an_outer_provider_failing_is_still_a_502(upstream: FakeUpstream, server: str, status: int) -> None:
    upstream.script("outer", *[Script(status=status, error_message="upstream broke")] * 4)

    with pytest.raises(openai.APIStatusError) as raised:
        ask(server, tools=[fusion_tool()])

    assert raised.value.status_code == 502
