"""The OpenAI Agents SDK against the real server: Runner.run and run_streamed on the Responses API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

from fakes.upstream import FakeUpstream, Script


@pytest.fixture(autouse=True)
def no_tracing() -> Iterator[None]:
    """The SDK would export traces to OpenAI: nothing leaves this machine."""
    set_tracing_disabled(True)
    yield


def client(url: str) -> openai.AsyncOpenAI:
    """A custom client, as a user points the SDK at openfusion; closed by each test (`async with`)."""
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-client-key", max_retries=0)


def agent(sdk: openai.AsyncOpenAI, model: str, **kwargs: Any) -> Agent:
    return Agent(
        name="assistant",
        instructions="Answer briefly.",
        model=OpenAIResponsesModel(model=model, openai_client=sdk),
        **kwargs,
    )


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@pytest.mark.parametrize("model", ["fusion/trio", "fake/plain"])
def test_runner_run(upstream: FakeUpstream, server: str, model: str) -> None:
    upstream.script("synth", Script(content="Fused answer."))
    upstream.script("plain", Script(content="Plain answer."))

    async def run() -> Any:
        async with client(server) as sdk:
            return await Runner.run(agent(sdk, model), "Why is the sky blue?")

    result = asyncio.run(run())

    assert result.final_output == ("Fused answer." if model == "fusion/trio" else "Plain answer.")
    usage = result.context_wrapper.usage
    assert usage.requests == 1 and usage.input_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


@pytest.mark.parametrize("model", ["fusion/trio", "fake/plain"])
def test_runner_run_streamed(upstream: FakeUpstream, server: str, model: str) -> None:
    upstream.script("synth", Script(chunks=["Fused ", "answer."]))
    upstream.script("plain", Script(chunks=["Plain ", "answer."]))

    async def run() -> tuple[Any, list[str]]:
        async with client(server) as sdk:
            result = Runner.run_streamed(agent(sdk, model), "Why is the sky blue?")
            kinds = [e.data.type async for e in result.stream_events() if e.type == "raw_response_event"]
            return result, kinds

    result, kinds = asyncio.run(run())

    assert result.final_output == ("Fused answer." if model == "fusion/trio" else "Plain answer.")
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 2
    assert ("response.fusion_call.completed" in kinds) == (model == "fusion/trio")


@pytest.mark.parametrize("model", ["fusion/trio", "fake/plain"])
def test_an_agent_calls_a_function_tool(upstream: FakeUpstream, server: str, model: str) -> None:
    answering = "synth" if model == "fusion/trio" else "plain"
    call = {"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    upstream.script(answering, Script(tool_calls=[call]), Script(content="It is sunny in Oslo."))

    async def run() -> Any:
        async with client(server) as sdk:
            streamed = Runner.run_streamed(agent(sdk, model, tools=[get_weather]), "Weather in Oslo?")
            async for _ in streamed.stream_events():
                pass
            return streamed

    result = asyncio.run(run())

    assert result.final_output == "It is sunny in Oslo."
    second = upstream.calls_for(answering)[1].body["messages"]
    tool_message = next(m for m in second if m["role"] == "tool")
    assert tool_message == {"role": "tool", "tool_call_id": "call_1", "content": "sunny in Oslo"}
    assistant = next(m for m in second if m.get("tool_calls"))
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    if model == "fusion/trio":  # the tool result is a step of the same turn: the panel is not asked again
        assert len(upstream.calls_for("a")) == 1


def test_model_settings_reach_the_provider(upstream: FakeUpstream, server: str) -> None:
    settings = ModelSettings(temperature=0.3, max_tokens=64, top_p=0.9)

    async def run() -> None:
        async with client(server) as sdk:
            await Runner.run(agent(sdk, "fake/plain", model_settings=settings), "Hi")

    asyncio.run(run())

    sent = upstream.calls_for("plain")[0].body
    assert (sent["temperature"], sent["max_completion_tokens"], sent["top_p"]) == (0.3, 64, 0.9)
