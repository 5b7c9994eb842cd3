"""NEL, U+2028 and U+2029 in an answer leave our streams as JSON escapes: a client that splits lines with
`str.splitlines()` (httpx's `iter_lines`, and so many SSE readers) gets every event whole, as the SDKs do."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest

from fakes.upstream import FakeUpstream, Script

PIECES = ["one\u2028two", "\x85three\u2029", "four\u2028\u2029\x85"]
TEXT = "".join(PIECES)
QUESTION = [{"role": "user", "content": "Q?"}]
# (path, model, the upstream model answering); pass-throughs here are translated, so re-encoded by openfusion.
STREAMS = [
    ("/v1/chat/completions", "fusion/trio", "synth"),
    ("/v1/responses", "fusion/trio", "synth"),
    ("/v1/responses", "fake/plain", "plain"),
    ("/v1/messages", "fusion/trio", "synth"),
    ("/v1/messages", "fake/plain", "plain"),
]


def _body(path: str, model: str) -> dict[str, Any]:
    if path == "/v1/responses":
        return {"model": model, "input": "Q?", "stream": True}
    if path == "/v1/messages":
        return {"model": model, "max_tokens": 100, "messages": QUESTION, "stream": True}
    return {"model": model, "messages": QUESTION, "stream": True}


def _text_of(path: str, event: dict[str, Any]) -> str:
    """The answer text an event carries, in its surface's shape."""
    if path == "/v1/responses":
        return str(event["delta"]) if event.get("type") == "response.output_text.delta" else ""
    if path == "/v1/messages":
        delta = event.get("delta") or {}
        return str(delta.get("text") or "") if event.get("type") == "content_block_delta" else ""
    choices = event.get("choices") or [{}]
    return str((choices[0].get("delta") or {}).get("content") or "")


@pytest.mark.parametrize(("path", "model", "answerer"), STREAMS)
def test_a_splitlines_client_reads_every_event_whole(
    upstream: FakeUpstream, server: str, path: str, model: str, answerer: str
) -> None:
    upstream.script(answerer, Script(chunks=PIECES))
    with httpx.stream("POST", f"{server}{path}", json=_body(path, model), timeout=30) as response:
        assert response.status_code == 200
        lines = list(response.iter_lines())  # split as `str.splitlines()` splits

    data = [line[len("data: ") :] for line in lines if line.startswith("data: ") and line != "data: [DONE]"]
    events = [json.loads(payload) for payload in data]  # a line cut in two would not parse
    assert "".join(_text_of(path, event) for event in events) == TEXT
    assert not [line for line in lines if line and not line.startswith(("data: ", "event: ", ":"))]


@pytest.mark.parametrize(("path", "model", "answerer"), STREAMS)
def test_the_sdks_read_the_text_identical(
    upstream: FakeUpstream, server: str, path: str, model: str, answerer: str
) -> None:
    upstream.script(answerer, Script(chunks=PIECES))
    if path == "/v1/messages":
        with (
            anthropic.Anthropic(base_url=server, api_key="k", max_retries=0) as client,
            client.messages.stream(model=model, max_tokens=100, messages=QUESTION) as stream,  # type: ignore[arg-type]
        ):
            assert "".join(stream.text_stream) == TEXT
            assert stream.get_final_message().content[0].text == TEXT  # type: ignore[union-attr]
        return
    with openai.OpenAI(base_url=f"{server}/v1", api_key="k", max_retries=0) as sdk:
        if path == "/v1/responses":
            events = list(sdk.responses.create(model=model, input="Q?", stream=True))
            assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == TEXT
            assert events[-1].response.output_text == TEXT  # type: ignore[union-attr]
        else:
            chunks = list(sdk.chat.completions.create(model=model, messages=QUESTION, stream=True))  # type: ignore[arg-type]
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
