"""The benchmarks' fake upstream (`bench/fakeup.py`) in the Responses API's and Anthropic Messages' wire formats, read
by the official clients; and the bench's openfusion (`bench.harness`) relaying those surfaces natively for the providers
flagged as speaking them, translating them for the chat-only one, and checking the client key on a keyed instance.

The instruction counts of `python -m bench.instructions` name what they measure only if each request takes the path
its case names: these tests are what says it does.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
from bench.harness import CLIENT_KEY, MASTER_KEY, Bench
from bench.scenarios import main_presets, native

pytestmark = pytest.mark.e2e

# `fake/…-tok-5`: five tokens, the fake's first five words.
WORDS = ["alpha ", "beta ", "gamma ", "delta ", "eps "]


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    bench = Bench(tmp_path)
    try:
        bench.start_fake()
        yield bench
    finally:
        bench.stop_all()


def reset_calls(bench: Bench) -> None:
    assert bench.fake is not None
    request = urllib.request.Request(bench.fake.url + "/reset", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()


def calls_per_model(bench: Bench) -> dict[str, int]:
    assert bench.fake is not None
    with urllib.request.urlopen(bench.fake.url + "/stats", timeout=5) as response:
        return dict(json.loads(response.read())["calls"])


def test_the_fake_answers_the_responses_api_as_openai_does(bench: Bench) -> None:
    assert bench.fake is not None
    client = openai.OpenAI(base_url=bench.fake.url + "/v1", api_key="unused", max_retries=0)
    model = "fakeresponses/lat-0-tok-5-every-1"

    whole = client.responses.create(model=model, input="Hi", store=False)
    assert whole.status == "completed"
    assert whole.output_text == "".join(WORDS)
    assert whole.usage is not None and (whole.usage.input_tokens, whole.usage.output_tokens) == (40, 8)

    with client.responses.stream(model=model, input="Hi", store=False) as stream:  # checks the events' order
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == WORDS  # one event per token, so `every-<ms>` spaces tokens
    assert final.output_text == "".join(WORDS)
    assert final.usage is not None and final.usage.output_tokens == 8
    assert bench.fake_calls() == {"responses complete": 1, "responses stream": 1}


def test_the_fake_answers_anthropic_messages_as_anthropic_does(bench: Bench) -> None:
    assert bench.fake is not None
    client = anthropic.Anthropic(base_url=bench.fake.url, api_key="unused", max_retries=0)
    model = "fakemessages/lat-0-tok-5-every-1"
    hi = [{"role": "user", "content": "Hi"}]

    whole = client.messages.create(model=model, max_tokens=64, messages=hi)  # type: ignore[arg-type]
    assert [block.type for block in whole.content] == ["text"]
    assert whole.content[0].text == "".join(WORDS)  # type: ignore[union-attr]
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (40, 8)

    with client.messages.stream(model=model, max_tokens=64, messages=hi) as stream:  # type: ignore[arg-type]
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces == WORDS
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 8
    assert bench.fake_calls() == {"messages complete": 1, "messages stream": 1}


def test_the_bench_server_relays_each_surface_the_way_its_case_names(bench: Bench) -> None:
    server = bench.start_openfusion("openfusion", main_presets(), ready_timeout_s=60)
    responses = openai.OpenAI(base_url=server.url + "/v1", api_key=MASTER_KEY, max_retries=0)
    messages = anthropic.Anthropic(base_url=server.url, api_key=MASTER_KEY, max_retries=0)
    hi = [{"role": "user", "content": "Hi"}]
    reset_calls(bench)  # whatever start-up asked

    for model in (native("fake/lat-0-tok-5", "responses"), "fake/lat-0-tok-5"):
        with responses.responses.stream(model=model, input="Hi", store=False) as stream:
            assert stream.get_final_response().output_text == "".join(WORDS)
    for model in (native("fake/lat-0-tok-5", "messages"), "fake/lat-0-tok-5"):
        with messages.messages.stream(model=model, max_tokens=64, messages=hi) as stream:  # type: ignore[arg-type]
            assert "".join(stream.text_stream) == "".join(WORDS)

    # Natively: as sent, on the provider's own surface; translated: as chat completions.
    assert bench.fake_calls() == {"responses stream": 1, "messages stream": 1, "stream": 2}
    assert calls_per_model(bench) == {
        "fakeresponses/lat-0-tok-5": 1,
        "fakemessages/lat-0-tok-5": 1,
        "fake/lat-0-tok-5": 2,
    }


def test_the_keyed_bench_server_takes_its_client_key_only(bench: Bench) -> None:
    server = bench.start_openfusion("openfusion_keyed", main_presets(), ready_timeout_s=60, keyed=True)
    hi = [{"role": "user", "content": "Hi"}]
    reset_calls(bench)

    with pytest.raises(openai.AuthenticationError):  # the key every unkeyed case sends is not this server's
        openai.OpenAI(base_url=server.url + "/v1", api_key=MASTER_KEY, max_retries=0).chat.completions.create(
            model="fake/lat-0",
            messages=hi,  # type: ignore[arg-type]
        )
    assert bench.fake_calls() == {}

    keyed = openai.OpenAI(base_url=server.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    chunks = keyed.chat.completions.create(model="fake/lat-0-tok-5", messages=hi, stream=True)  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(WORDS)
    assert bench.fake_calls() == {"stream": 1}
