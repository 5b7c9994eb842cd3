"""Quirks seen on real OpenAI-compatible servers (llama.cpp's), reproduced by the fake so the fast suite covers them."""

from __future__ import annotations

import json
from typing import Any

import httpx

from fakes.upstream import FakeUpstream, Script
from openfusion.settings import ProviderConfig

from .conftest import ANALYSIS

HI = [{"role": "user", "content": "Hi"}]


def llama_like_provider(url: str) -> ProviderConfig:
    """How a llama.cpp server is configured: max_tokens only, no usage in streams, no reasoning field."""
    return ProviderConfig(
        name="fake",
        base_url=f"{url}/v1",
        models=["fake/*"],
        strip_prefix=True,
        max_tokens_field="max_tokens",
        stream_usage=False,
        reasoning_style="none",
    )


def test_the_judge_steps_down_structured_output_dialects_and_remembers(
    upstream: FakeUpstream, start_server: Any
) -> None:
    upstream.script(
        "judge", Script(content=json.dumps(ANALYSIS), reject_response_format={"json_schema"}, reject_status=500)
    )

    with start_server() as url:
        first = httpx.post(f"{url}/v1/chat/completions", json={"model": "fusion/trio", "messages": HI}, timeout=20)
        calls_after_first = len(upstream.calls_for("judge"))
        second = httpx.post(f"{url}/v1/chat/completions", json={"model": "fusion/trio", "messages": HI}, timeout=20)

    for response in (first, second):
        judge = response.json()["fusion"]["judge"]
        assert judge["status"] == "ok" and judge["structured_output"] == "json_object"
    formats = [call.body.get("response_format", {}).get("type") for call in upstream.calls_for("judge")]
    # First request: json_schema refused (retried by the policy, a 500), then json_object worked.
    assert formats[:calls_after_first][-1] == "json_object" and "json_schema" in formats[:calls_after_first]
    # Second request: straight to what worked for this provider.
    assert formats[calls_after_first:] == ["json_object"]
    assert upstream.calls_for("judge")[-1].body["response_format"]["schema"]["required"] == list(ANALYSIS)


def test_a_judge_without_any_structured_output_still_works_from_the_prompt(upstream: FakeUpstream, server: str) -> None:
    upstream.script(
        "judge",
        Script(
            content="Here it is:\n```json\n" + json.dumps(ANALYSIS) + "\n```",
            reject_response_format={"json_schema", "json_object"},
        ),
    )

    response = httpx.post(f"{server}/v1/chat/completions", json={"model": "fusion/trio", "messages": HI}, timeout=20)

    judge = response.json()["fusion"]["judge"]
    assert judge["status"] == "ok" and judge["structured_output"] == "instructions"
    assert "response_format" not in upstream.calls_for("judge")[-1].body


def test_a_server_without_stream_usage(upstream: FakeUpstream, start_server: Any, fake_upstream: Any) -> None:
    _, url = fake_upstream
    upstream.default = Script(stream_usage=False)
    upstream.script("judge", Script(content=json.dumps(ANALYSIS), stream_usage=False))

    with start_server(providers=[llama_like_provider(url)]) as server:
        plain = httpx.post(f"{server}/v1/chat/completions", json={"model": "fusion/trio", "messages": HI}, timeout=20)
        streamed = httpx.post(
            f"{server}/v1/chat/completions", json={"model": "fusion/trio", "messages": HI, "stream": True}, timeout=20
        )

    # Not streamed to the client: the synthesizer is asked without a stream, so its usage is known.
    report = plain.json()["fusion"]
    assert report["usage_complete"] is True and report["synthesizer"]["usage"]["total_tokens"] == 18
    assert plain.json()["usage"]["total_tokens"] == 18 * 5
    synth_calls = upstream.calls_for("synth")
    assert synth_calls[0].stream is False and "max_tokens" in synth_calls[0].body
    assert "max_completion_tokens" not in synth_calls[0].body and "stream_options" not in synth_calls[1].body
    # Streamed: the server never says, and the report says so instead of pretending.
    final = json.loads([line for line in streamed.text.splitlines() if line.startswith("data: {")][-1][6:])
    assert final["fusion"]["usage_complete"] is False and final["fusion"]["synthesizer"]["usage"] is None
    assert final["usage"]["total_tokens"] == 18 * 4
