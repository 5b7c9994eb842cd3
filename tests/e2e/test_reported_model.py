"""The `model` an answer reports on /v1/messages and /v1/responses: the same streamed or not, never the alias.

OpenRouter reports the concrete model that wrote the answer (a fallback's, when one did), never the
fusion slug asked for. A Messages stream names it only in `message_start`, its first event, so the
model is openfusion's slug of the answering model, known before the answer begins: the planned
synthesizer for fusion, the provider the request went to for a pass-through.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest

from fakes.upstream import FakeUpstream, Script

HI = [{"role": "user", "content": "Why is the sky blue?"}]
# The answering model calls itself something else upstream; `fake/down` always fails, so `fake/plain` answers.
CASES = [
    ("fusion/trio", None, "fake/synth"),
    ("fake/plain", None, "fake/plain"),
    ("fake/down", ["fake/down", "fake/plain"], "fake/plain"),
]
unknown_item_warning = pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")


@pytest.fixture
def scripted(upstream: FakeUpstream) -> FakeUpstream:
    upstream.script("synth", Script(content="Rayleigh scattering.", response_model="synth-2026-01"))
    upstream.script("plain", Script(content="Rayleigh scattering.", response_model="plain-2026-01"))
    upstream.script("down", Script(status=503, error_message="down"))
    return upstream


def sse_data(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]


@pytest.mark.parametrize(("model", "fallbacks", "expected"), CASES, ids=["fusion", "pass-through", "fallback"])
def test_messages_report_one_model_streamed_or_not(
    scripted: FakeUpstream, server: str, model: str, fallbacks: list[str] | None, expected: str
) -> None:
    extra = {"models": fallbacks} if fallbacks else {}
    with anthropic.Anthropic(base_url=server, api_key="k", max_retries=0) as client:
        whole = client.messages.create(model=model, max_tokens=64, messages=HI, extra_body=extra)  # type: ignore[arg-type]
        with client.messages.stream(model=model, max_tokens=64, messages=HI, extra_body=extra) as stream:  # type: ignore[arg-type]
            streamed = stream.get_final_message()
    raw = httpx.post(f"{server}/v1/messages", json={"model": model, "max_tokens": 64, "messages": HI, "stream": True,
                                                    **extra}, timeout=30)  # fmt: skip

    assert whole.model == streamed.model == expected
    assert [e["message"]["model"] for e in sse_data(raw) if e["type"] == "message_start"] == [expected]


@unknown_item_warning
@pytest.mark.parametrize(("model", "fallbacks", "expected"), CASES, ids=["fusion", "pass-through", "fallback"])
def test_responses_report_one_model_streamed_or_not(
    scripted: FakeUpstream, server: str, model: str, fallbacks: list[str] | None, expected: str
) -> None:
    extra = {"models": fallbacks} if fallbacks else {}
    with openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as client:
        whole = client.responses.create(model=model, input="Why is the sky blue?", extra_body=extra)
        with client.responses.stream(model=model, input="Why is the sky blue?", extra_body=extra) as stream:
            streamed = stream.get_final_response()
    raw = httpx.post(f"{server}/v1/responses", json={"model": model, "input": "Hi", "stream": True, **extra},
                     timeout=30)  # fmt: skip

    assert whole.model == streamed.model == expected
    # Every snapshot of the stream names it, from `response.created` on.
    assert {e["response"]["model"] for e in sse_data(raw) if "response" in e} == {expected}
