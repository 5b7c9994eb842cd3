"""The Responses API through the real server: the official SDK (create, stream, function tools) and raw events."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from fakes.upstream import FakeUpstream, Script

from .conftest import ANALYSIS
from .test_activity_wiring import generation
from .test_fusion import DETAILED, detailed_usage
from .test_messages import REFUSAL, gemini_tool_calls, refusal

RESPONSES = "/v1/responses"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
# openai-python warns when it serializes a response holding an output item type it does not know
# (`openrouter:fusion`, as OpenRouter sends it); the values are all there.
unknown_item_warning = pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="sk-client-key", max_retries=0)


def raw_events(url: str, body: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """POST a streamed request: every non-empty SSE line, and the parsed `data:` payloads."""
    lines: list[str] = []
    with httpx.stream("POST", f"{url}{RESPONSES}", json={**body, "stream": True}, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    return lines, [json.loads(line[6:]) for line in lines if line.startswith("data: ")]


def test_a_fused_answer_through_responses_create(upstream: FakeUpstream, server: str) -> None:
    upstream.script("synth", Script(content="Rayleigh scattering.", cost=0.5))
    upstream.script("b", Script(content="Blue light scatters more."))

    with sdk(server) as client:
        raw = client.responses.with_raw_response.create(model="fusion/trio", input="Why is the sky blue?")
    response = raw.parse()

    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.output_text == "Rayleigh scattering."
    assert [item.type for item in response.output] == ["openrouter:fusion", "message"]
    fusion = response.output[0].to_dict(warnings=False)
    assert fusion["status"] == "completed" and fusion["content"] == [] and fusion["id"].startswith("st_")
    assert fusion["analysis"] == ANALYSIS
    assert {r["model"]: r["content"] for r in fusion["responses"]}["fake/b"] == "Blue light scatters more."
    assert fusion["sources"] == [] and "failed_models" not in fusion and "failure_reason" not in fusion
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (55, 35, 90)
    assert usage.input_tokens_details.cached_tokens == 0 and usage.output_tokens_details.reasoning_tokens == 0
    assert raw.headers["x-generation-id"].startswith("gen-")
    assert response.model == "fake/synth" and response.model_extra["fusion"]["preset"] == "trio"
    # The panel saw the question as a user message.
    assert upstream.calls_for("a")[0].body["messages"] == [{"role": "user", "content": "Why is the sky blue?"}]


@unknown_item_warning
def test_a_fused_answer_through_responses_stream(upstream: FakeUpstream, server: str) -> None:
    for model in "abc":
        upstream.script(model, Script(chunks=[f"From {model}, ", "an answer."]))
    upstream.script("synth", Script(chunks=["Rayleigh ", "scattering."], reasoning=["Compare ", "them."]))

    with sdk(server) as client, client.responses.stream(model="fusion/trio", input="Why is the sky blue?") as stream:
        events = list(stream)
        final = stream.get_final_response()

    assert final.output_text == "Rayleigh scattering." and final.status == "completed"
    assert [item.type for item in final.output] == ["openrouter:fusion", "reasoning", "message"]
    assert final.output[1].content[0].text == "Compare them."
    panel_types = ("response.fusion_call.panel.delta", "response.fusion_call.panel.completed")
    panel = [event.to_dict() for event in events if event.type in panel_types]
    assert [event.type for event in events if event.type not in panel_types] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.fusion_call.in_progress",
        *["response.fusion_call.panel.added"] * 3,
        "response.fusion_call.analysis.in_progress",
        "response.fusion_call.analysis.completed",
        "response.fusion_call.completed",
        "response.output_item.done",
        "response.output_item.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    # The panelists answer at once, their events interleaved as they come: each one's own are in order, every one of
    # them after the panel was announced and before the analysis began.
    types = [event.type for event in events]
    first, last = types.index(panel_types[0]), len(types) - 1 - types[::-1].index(panel_types[1])
    assert types[first - 1] == "response.fusion_call.panel.added"
    assert types[last + 1] == "response.fusion_call.analysis.in_progress"
    for model in "abc":
        own = [(event["type"], event.get("delta")) for event in panel if event["model"] == f"fake/{model}"]
        assert own == [
            ("response.fusion_call.panel.delta", f"From {model}, "),
            ("response.fusion_call.panel.delta", "an answer."),
            ("response.fusion_call.panel.completed", None),
        ]
    assert [e.output_index for e in events if e.type == "response.output_item.added"] == [0, 1, 2]


def test_a_non_streamed_panel_is_not_streamed_upstream(upstream: FakeUpstream, server: str) -> None:
    httpx.post(f"{server}{RESPONSES}", json={"model": "fusion/trio", "input": "Hi"}, timeout=30)
    streamed = [model for model in "abc" if upstream.calls_for(model)[0].stream]

    httpx.post(f"{server}{RESPONSES}", json={"model": "fusion/trio", "input": "Hi", "stream": True}, timeout=30)

    assert streamed == []  # nobody watches the panel write: one whole answer each
    assert all(upstream.calls_for(model)[1].stream for model in "abc")  # a streamed response shows it


def test_the_raw_event_stream(upstream: FakeUpstream, start_server: Any) -> None:
    upstream.script("a", Script(delay_s=0.5))  # a silent panel: keep-alives while it works
    upstream.script("synth", Script(content="Blue."))

    with start_server(keepalive_interval_s=0.1) as url:
        lines, events = raw_events(url, {"model": "fusion/trio", "input": "Why?", "keepalive": "ignored"})

    assert lines[0] == "event: response.created"  # before anything else, keep-alives included
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    assert "data: [DONE]" not in lines
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    names = [line[7:] for line in lines if line.startswith("event: ")]
    assert names == [e["type"] for e in events]  # each `event:` line names its data's type
    response_id = events[0]["response"]["id"]
    assert all(e["response"]["id"] == response_id for e in events if "response" in e)
    created = events[0]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert any(line.startswith(":") for line in lines)  # keep-alive comments during the slow panel
    fusion_item = events[2]["item"]
    progress = [e for e in events if e["type"].startswith("response.fusion_call.")]
    assert all(e["item_id"] == fusion_item["id"] and e["output_index"] == 0 for e in progress)
    assert [e["model"] for e in progress if e["type"].endswith("panel.added")] == ["fake/a", "fake/b", "fake/c"]
    completed_panel = [e for e in progress if e["type"].endswith("panel.completed")]
    assert completed_panel[-1]["model"] == "fake/a" and completed_panel[-1]["content"] == "Answer from a."
    analysis = next(e for e in progress if e["type"].endswith("analysis.in_progress"))
    assert analysis["analyst_model"] == analysis["judge_model"] == "fake/judge"
    assert next(e for e in progress if e["type"].endswith("analysis.completed"))["analysis"] == ANALYSIS
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["openrouter:fusion", "message"]
    message = final["output"][1]
    assert message["status"] == "completed" and message["role"] == "assistant"
    assert message["content"] == [{"type": "output_text", "text": "Blue.", "annotations": [], "logprobs": []}]
    assert set(final["usage"]) >= {
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "input_tokens_details",
        "output_tokens_details",
    }


@unknown_item_warning
def test_a_panelist_failing_does_not_end_the_sdks_stream(upstream: FakeUpstream, server: str) -> None:
    """openai-python raises APIError at any streamed event with a top-level `error`: a panelist's failure is
    reported as `message`, and the answer streams on to the end."""
    upstream.script("a", Script(status=429, error_message="rate limited"))
    upstream.script("synth", Script(chunks=["Rayleigh ", "scattering."]))

    with sdk(server) as client:
        with client.responses.stream(model="fusion/trio", input="Why is the sky blue?") as stream:
            events = list(stream)
            final = stream.get_final_response()
        created = list(client.responses.create(model="fusion/trio", input="Why is the sky blue?", stream=True))

    assert final.status == "completed" and final.output_text == "Rayleigh scattering."
    failed = [e.to_dict() for e in events if e.type == "response.fusion_call.panel.failed"]
    assert len(failed) == 1 and failed[0]["model"] == "fake/a" and failed[0]["status_code"] == 429
    assert "rate limited" in failed[0]["message"] and "error" not in failed[0]
    assert created[-1].type == "response.completed"


@unknown_item_warning
@pytest.mark.parametrize("model", ["fusion/trio", "fake/plain"])
def test_streamed_parallel_calls_without_an_index_stay_apart(upstream: FakeUpstream, server: str, model: str) -> None:
    upstream.script("synth" if model == "fusion/trio" else "plain", Script(raw_body=gemini_tool_calls()))

    with (
        sdk(server) as client,
        client.responses.stream(model=model, input="London and Oslo?", tools=[WEATHER]) as stream,
    ):
        final = stream.get_final_response()

    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.call_id, c.name, json.loads(c.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("call_1", "get_weather", {"city": "London"}),
        ("call_2", "get_weather", {"city": "Oslo"}),
    ]


@unknown_item_warning
@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_a_fusions_usage_sums_the_token_details_of_its_calls(upstream: FakeUpstream, server: str, stream: bool) -> None:
    detailed_usage(upstream)

    with sdk(server) as client:
        if stream:
            with client.responses.stream(model="fusion/trio", input="Why?") as events:
                response = events.get_final_response()
        else:
            response = client.responses.create(model="fusion/trio", input="Why?")

    usage = response.usage
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (500, 250)
    assert usage.input_tokens_details.cached_tokens == 200
    assert usage.output_tokens_details.reasoning_tokens == 150


@unknown_item_warning
def test_a_fusions_token_details_are_its_sums_when_the_synthesizer_counts_on_its_last_chunk(
    upstream: FakeUpstream, server: str
) -> None:
    """Some providers put the usage on the chunk that finishes the answer: the details stay the run's sums, as its
    token counts are, not the synthesizer's alone."""
    detailed_usage(upstream)
    upstream.script("synth", Script(chunks=["one ", "two"], usage=DETAILED, usage_on_finish=True))

    with sdk(server) as client, client.responses.stream(model="fusion/trio", input="Why?") as events:
        response = events.get_final_response()

    usage = response.usage
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (500, 250)
    assert usage.input_tokens_details.cached_tokens == 200
    assert usage.output_tokens_details.reasoning_tokens == 150


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_tokens_written_to_a_cache_are_counted_as_such(upstream: FakeUpstream, server: str, stream: bool) -> None:
    details = {"cached_tokens": 40, "cache_write_tokens": 30}
    usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120, "prompt_tokens_details": details}
    upstream.script("solo", Script(chunks=["Hi ", "there."], usage=usage))

    with sdk(server) as client:
        if stream:
            with client.responses.stream(model="fake/solo", input="Hi") as events:
                response = events.get_final_response()
        else:
            response = client.responses.create(model="fake/solo", input="Hi")

    counts = response.usage
    assert counts is not None and (counts.input_tokens, counts.output_tokens) == (100, 20)
    tokens = counts.input_tokens_details
    assert (tokens.cached_tokens, tokens.cache_write_tokens) == (40, 30)


def test_a_pass_through_whose_tools_all_run_elsewhere_sends_the_provider_no_tools(
    upstream: FakeUpstream, server: str
) -> None:
    """The Agents SDK's WebSearchTool alone: a hosted tool no chat model is offered. An empty `tools` is refused by
    some providers, and `tool_choice` or `parallel_tool_calls` without tools by OpenAI."""
    with sdk(server) as client:
        response = client.responses.create(
            model="fake/plain", input="News?", tools=[{"type": "web_search"}], tool_choice="required",
            parallel_tool_calls=True,
        )  # fmt: skip

    assert response.status == "completed"
    sent = upstream.calls_for("plain")[0].body
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(sent)


@unknown_item_warning
@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize("model", ["fusion/trio", "fake/plain"])
def test_a_refusal_is_a_refusal_content_part(upstream: FakeUpstream, server: str, model: str, stream: bool) -> None:
    upstream.script(
        "synth" if model == "fusion/trio" else "plain",
        Script(raw_body=refusal(streamed=stream)),
    )

    with sdk(server) as client:
        if stream:
            with client.responses.stream(model=model, input="Something harmful.") as events:
                kinds = [event.type for event in events]
                response = events.get_final_response()
        else:
            response = client.responses.create(model=model, input="Something harmful.")

    message = response.output[-1]
    assert message.type == "message" and response.status == "completed"
    assert [part.to_dict() for part in message.content] == [{"type": "refusal", "refusal": REFUSAL}]  # type: ignore[union-attr]
    if stream:
        assert kinds.count("response.refusal.delta") == 2 and "response.refusal.done" in kinds


def test_the_response_echoes_truncation_and_reasoning_summary(upstream: FakeUpstream, server: str) -> None:
    with sdk(server) as client:
        response = client.responses.create(
            model="fake/plain", input="Hi", truncation="auto", reasoning={"effort": "low", "summary": "auto"}
        )

    assert response.truncation == "auto"
    assert response.reasoning is not None and (response.reasoning.effort, response.reasoning.summary) == ("low", "auto")


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("truncation", "sometimes", "truncation"),
        ("metadata", {"note": "x" * 513}, "metadata.note"),
        ("metadata", {"k" * 65: "v"}, "metadata"),
        ("text", {"format": {"type": "json_schema", "name": 5, "schema": {"type": "object"}}}, "text.format.name"),
    ],
)
def test_values_openai_refuses_are_refused(
    upstream: FakeUpstream, server: str, field: str, value: Any, param: str
) -> None:
    response = httpx.post(f"{server}{RESPONSES}", json={"model": "fake/plain", "input": "Hi", field: value}, timeout=30)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(param)
    assert upstream.calls_for("plain") == []


def test_a_failed_fusion_ends_with_response_failed(upstream: FakeUpstream, server: str) -> None:
    for model in "abc":
        upstream.script(model, Script(status=500, error_message=f"{model} is down"))

    _, events = raw_events(server, {"model": "fusion/trio", "input": "Why?"})

    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.failed"
    assert "response.completed" not in kinds
    failed_panel = [e for e in events if e["type"] == "response.fusion_call.panel.failed"]
    assert len(failed_panel) == 3 and all(e["status_code"] == 500 for e in failed_panel)
    done = next(e for e in events if e["type"] == "response.output_item.done")["item"]
    assert done["type"] == "openrouter:fusion" and done["status"] == "incomplete"
    assert done["failure_reason"] == "all_panels_failed" and len(done["failed_models"]) == 3
    final = events[-1]["response"]
    assert final["status"] == "failed" and final["error"]["code"] == "all_panels_failed"
    assert "all panel models failed" in final["error"]["message"]


def test_a_non_streamed_fusion_failure_is_an_http_error(upstream: FakeUpstream, server: str) -> None:
    for model in "abc":
        upstream.script(model, Script(status=500))

    response = httpx.post(f"{server}{RESPONSES}", json={"model": "fusion/trio", "input": "Why?"}, timeout=30)

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "all_panels_failed"


def test_pass_through_is_translated_for_a_chat_provider(upstream: FakeUpstream, server: str) -> None:
    upstream.script(
        "plain",
        Script(
            content="Hello there.",
            usage={
                "prompt_tokens": 5,
                "completion_tokens": 3,
                "total_tokens": 8,
                "prompt_tokens_details": {"cached_tokens": 2},
            },
        ),
    )

    with sdk(server) as client:
        created = client.responses.create(
            model="fake/plain", input="Hi", instructions="Be brief.", max_output_tokens=50, temperature=0.2
        )
        with client.responses.stream(model="fake/plain", input="Hi") as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            streamed = stream.get_final_response()

    assert created.output_text == "Hello there." and [i.type for i in created.output] == ["message"]
    assert created.usage is not None and created.usage.input_tokens_details.cached_tokens == 2
    assert created.instructions == "Be brief." and created.max_output_tokens == 50
    assert "".join(deltas) == streamed.output_text == "Hello there."
    first = upstream.calls_for("plain")[0].body
    assert first["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert first["max_completion_tokens"] == 50 and first["temperature"] == 0.2


def test_a_function_tool_round_trip(upstream: FakeUpstream, server: str) -> None:
    upstream.script(
        "plain",
        Script(tool_calls=[{"id": "call_w1", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]),
        Script(content="It is sunny in Oslo."),
    )

    with sdk(server) as client:
        first = client.responses.create(model="fake/plain", input="Weather in Oslo?", tools=[WEATHER])
        call = first.output[0]
        assert call.type == "function_call" and call.name == "get_weather" and call.call_id == "call_w1"
        assert json.loads(call.arguments) == {"city": "Oslo"}
        history: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}, call.to_dict()]
        history.append({"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"})
        with client.responses.stream(model="fake/plain", input=history, tools=[WEATHER]) as stream:
            second = stream.get_final_response()

    assert second.output_text == "It is sunny in Oslo."
    sent = upstream.calls_for("plain")
    assert sent[0].body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": WEATHER["parameters"],
            },
        }
    ]
    weather_call = {"name": "get_weather", "arguments": '{"city":"Oslo"}'}
    assert sent[1].body["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_w1", "type": "function", "function": weather_call}],
        },
        {"role": "tool", "tool_call_id": "call_w1", "content": "sunny, 21 C"},
    ]


def test_a_continued_response_answers_its_calls(upstream: FakeUpstream, server: str) -> None:
    """A response that called a function is continued with the call's output, as OpenAI requires; a follow-up that
    leaves the call unanswered is refused, naming previous_response_id, before any model is asked."""
    call = {"id": "call_w1", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    upstream.script("plain", Script(tool_calls=[call]), Script(content="It is sunny in Oslo."))

    with sdk(server) as client:
        first = client.responses.create(model="fake/plain", input="Weather in Oslo?", tools=[WEATHER])
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model="fake/plain", previous_response_id=first.id, input="Never mind.")
        output = {"type": "function_call_output", "call_id": "call_w1", "output": "sunny"}
        second = client.responses.create(model="fake/plain", previous_response_id=first.id, input=[output])

    error = refused.value.response.json()["error"]
    assert error["param"] == "previous_response_id", error
    assert error["message"] == ("Invalid value for 'previous_response_id': no function_call_output answers the "
                                "function call with call_id 'call_w1'."), error  # fmt: skip
    assert second.output_text == "It is sunny in Oslo." and len(upstream.calls_for("plain")) == 2


def test_a_streamed_function_call(upstream: FakeUpstream, server: str) -> None:
    arguments = {"city": "Oslo", "unit": "celsius"}
    upstream.script(
        "plain", Script(tool_calls=[{"id": "call_7", "function": {"name": "get_weather", "arguments": arguments}}])
    )

    _, events = raw_events(server, {"model": "fake/plain", "input": "Weather?", "tools": [WEATHER]})

    kinds = [e["type"] for e in events]
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * len(deltas),
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added, done = events[2]["item"], events[-2]["item"]
    assert added["type"] == "function_call" and added["call_id"] == "call_7" and added["arguments"] == ""
    assert json.loads("".join(deltas)) == json.loads(done["arguments"]) == arguments
    assert done["status"] == "completed" and done["id"] == added["id"]


@unknown_item_warning
def test_a_fused_answer_may_call_the_clients_function(upstream: FakeUpstream, server: str) -> None:
    upstream.script(
        "synth",
        Script(tool_calls=[{"id": "call_s", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]),
    )

    with sdk(server) as client, client.responses.stream(model="fusion/trio", input="Rome?", tools=[WEATHER]) as stream:
        final = stream.get_final_response()

    assert [item.type for item in final.output] == ["openrouter:fusion", "function_call"]
    assert final.output[1].call_id == "call_s" and json.loads(final.output[1].arguments) == {"city": "Rome"}


def test_a_cut_answer_is_incomplete(upstream: FakeUpstream, server: str) -> None:
    upstream.script("plain", Script(content="Long answer", finish_reason="length"))

    _, events = raw_events(server, {"model": "fake/plain", "input": "Hi", "max_output_tokens": 2})

    assert events[-1]["type"] == "response.incomplete"
    final = events[-1]["response"]
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete"


def test_an_upstream_refusal_keeps_its_status(upstream: FakeUpstream, server: str) -> None:
    upstream.script("plain", Script(status=400, error_message="context too long"))

    response = httpx.post(f"{server}{RESPONSES}", json={"model": "fake/plain", "input": "Hi", "stream": True})

    assert response.status_code == 400 and "context too long" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "Hi"}, "model"),
        ({"model": "fake/plain"}, "input"),
        ({"model": "fake/plain", "input": 5}, "input"),
        ({"model": "fake/plain", "input": "Hi", "max_output_tokens": "many"}, "max_output_tokens"),
        ({"model": "fake/plain", "input": "Hi", "stream": {"on": True}}, "stream"),
        ({"model": "fake/plain", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"model": "fake/plain", "input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"model": "fake/plain", "input": [{"type": "telepathy"}]}, "input[0].type"),
        ({"model": "fake/plain", "input": "Hi", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"model": "fake/plain", "input": "Hi", "tool_choice": "sometimes"}, "tool_choice"),
        ({"model": "fake/plain", "input": "Hi", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"model": "fake/plain", "input": "Hi", "metadata": {"a": 1}}, "metadata.a"),
        ({"model": "fake/plain", "input": "Hi", "background": True}, "background"),
        (
            {"model": "fake/plain", "input": [{"type": "function_call", "call_id": "c\n1", "name": "f"}]},
            "input[0].call_id",
        ),
        ({"model": "fake/plain", "input": "Hi", "tools": [{**WEATHER, "name": "get\u0000weather"}]}, "tools[0].name"),
        ({"model": "fake/plain", "input": "Hi", "user": "a\rb"}, "user"),
        # No text is no part: a whole fusion ran on an empty prompt.
        (
            {"model": "fusion/trio", "input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input[0].content[0].text",
        ),
        # A file with nothing in it (a file_url has no chat form): it was sent as an empty file.
        (
            {
                "model": "fake/plain",
                "input": [{"role": "user", "content": [{"type": "input_file", "file_url": "https://x"}]}],
            },
            "input[0].content[0].file_data",
        ),
        (
            {"model": "fusion/trio", "input": "Hi", "plugins": [{"id": "fusion", "analysis_models": "x"}]},
            "plugins[0].analysis_models",
        ),
    ],
)
def test_bad_input_is_a_400_naming_the_parameter(
    upstream: FakeUpstream, server: str, body: dict[str, Any], param: str
) -> None:
    response = httpx.post(f"{server}{RESPONSES}", json=body)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert upstream.calls == []


def test_unknown_fields_and_hosted_tools_are_ignored(upstream: FakeUpstream, server: str) -> None:
    body = {
        "model": "fake/plain",
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Terse."}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        ],
        "tools": [{"type": "web_search"}, WEATHER],
        "include": ["reasoning.encrypted_content"],
        "reasoning": {"effort": "low", "summary": "auto"},
        "text": {"format": {"type": "json_schema", "name": "reply", "schema": {"type": "object"}}, "verbosity": "low"},
        "store": False,
        "some_future_field": {"x": 1},
    }

    response = httpx.post(f"{server}{RESPONSES}", json=body)

    assert response.status_code == 200, response.text
    sent = upstream.calls_for("plain")[0].body
    assert sent["messages"] == [{"role": "system", "content": "Terse."}, {"role": "user", "content": "Hi"}]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
    assert sent["reasoning_effort"] == "low"
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": {"type": "object"}},
    }
    assert "some_future_field" not in sent and "include" not in sent and "store" not in sent


def test_activity_records_the_surface(upstream: FakeUpstream, start_server: Any, tmp_path: Any) -> None:
    with start_server(activity={"path": tmp_path / "activity.sqlite3"}) as url:
        via_responses = httpx.post(f"{url}{RESPONSES}", json={"model": "fusion/trio", "input": "Hi"}, timeout=20)
        via_chat = httpx.post(
            f"{url}/v1/chat/completions", json={"model": "fake/plain", "messages": [{"role": "user", "content": "Hi"}]}
        )
        responses_record = generation(url, via_responses.headers["x-generation-id"])
        chat_record = generation(url, via_chat.headers["x-generation-id"])

    assert responses_record["api_type"] == "responses" and responses_record["preset"] == "trio"
    assert len(responses_record["calls"]) == 5
    assert chat_record["api_type"] == "completions"


def test_a_streamed_panel_call_steps_down_a_refused_temperature(upstream: FakeUpstream, server: str) -> None:
    upstream.script("a", Script(reject_parameters={"temperature"}, chunks=["Cold ", "answer."]))
    body = {"model": "fusion/trio", "input": "Hi", "plugins": [{"id": "fusion", "temperature": 0.7}]}

    _, events = raw_events(server, body)

    completed = [e for e in events if e["type"] == "response.fusion_call.panel.completed"]
    assert {e["model"]: e["content"] for e in completed}["fake/a"] == "Cold answer."
    assert [
        e["delta"] for e in events if e["type"] == "response.fusion_call.panel.delta" and e["model"] == "fake/a"
    ] == [
        "Cold ",
        "answer.",
    ]
    calls = upstream.calls_for("a")
    assert [("temperature" in c.body, c.stream) for c in calls] == [(True, True), (False, True)]
