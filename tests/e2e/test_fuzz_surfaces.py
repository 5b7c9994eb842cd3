"""Property: whatever a client sends to /v1/responses or /v1/messages, the real server answers without a 5xx, in
the surface's own dialect, and loses nothing.

- every error is in the caller's shape: OpenAI's `{"error": {message, type, param, code}}` on /v1/responses, its
  `param` a Responses parameter named in the message; Anthropic's `{"type": "error", "error": {type, message}}`
  on /v1/messages, a validation error's message led by the parameter's path in Anthropic's notation
  (`messages.0.content.1.type: …`);
- a stream is well formed to its end (`response.created` … a terminal event; `message_start` … `message_stop`
  or an `error` event);
- every response that carries an `X-Generation-Id` (each one served, and each one refused after its model was
  known) left its activity record under that id.

Requests are drawn from each request schema (e2e.surface_strategies), valid ones mutated. The fast suite runs a
fixed, derandomized set; FUZZ_PROFILE=deep runs thousands of fresh ones per surface.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from hypothesis import example, given, settings

from e2e.strategies import mostly, nested
from e2e.surface_strategies import count_tokens_request, junk, messages_request, responses_request
from e2e.test_fuzz_requests import PROFILE, ErrorLog, fuzz_served
from fakes.upstream import FakeUpstream

RESPONSES, MESSAGES, COUNT_TOKENS = "/v1/responses", "/v1/messages", "/v1/messages/count_tokens"
# Fewer examples than chat's: the schemas are smaller, and the fast suite keeps each surface to a few seconds.
EXAMPLES = {"fuzz-fast": 120, "fuzz-deep": 3000}[PROFILE]
FUZZ = settings(settings.get_profile(PROFILE), max_examples=EXAMPLES)

# The parameters each surface's errors may name: its own request fields, never the internal chat names.
RESPONSES_PARAMS = {
    "body", "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "stream",
    "max_output_tokens", "temperature", "top_p", "reasoning", "text", "metadata", "plugins", "store",
    "previous_response_id", "user", "background", "models", "conversation", "truncation",
}  # fmt: skip
MESSAGES_PARAMS = {
    "model", "max_tokens", "messages", "system", "stop_sequences", "stream", "temperature", "top_p", "top_k",
    "tools", "tool_choice", "thinking", "metadata", "plugins", "models",
}  # fmt: skip
ANTHROPIC_PATH = re.compile(r"^([a-z_]+)((?:\.[A-Za-z0-9_:-]+)*): \S")


@pytest.fixture(scope="module")
def surfaces_server(
    fake_upstream: tuple[FakeUpstream, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ErrorLog]]:
    """The surfaces fuzz's server, its activity flushed often (every generation id is looked up)."""
    with fuzz_served(*fake_upstream, tmp_path_factory.mktemp("fuzz-surfaces"), flush_interval_s=0.05) as served:
        yield served


def encode(payload: Any) -> bytes:
    """JSON with every non-ASCII character escaped: lone surrogates reach the server as `\\ud800` escapes."""
    return json.dumps(payload, ensure_ascii=True).encode()


def openai_error(body: Any, status: int) -> None:
    """OpenAI's error shape; a 400 names a Responses parameter, in its message too."""
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict) and set(error) >= {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str) and error["message"] and "Traceback" not in error["message"]
    assert error["code"] != "internal_error", error
    if status == 400:
        param = error["param"]
        assert isinstance(param, str) and param, error
        assert re.split(r"[.\[]", param)[0] in RESPONSES_PARAMS, f"a parameter Responses does not have: {error}"
        assert param in error["message"], error


def anthropic_error(body: Any, status: int) -> None:
    """Anthropic's error shape, exactly; a 400's message starts with the parameter's path (`messages.0.role: …`)."""
    assert isinstance(body, dict) and body.get("type") == "error", body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"type", "message"}, body
    assert isinstance(error["type"], str) and error["type"].endswith("_error"), body
    message = error["message"]
    assert isinstance(message, str) and message and "Traceback" not in message, body
    assert error["type"] != "api_error", f"a crash: {body}"
    if status == 400 and not message.startswith("The request body"):
        match = ANTHROPIC_PATH.match(message)
        # The path in Anthropic's dotted notation (the pattern takes no brackets), rooted at a Messages parameter.
        assert match and match[1] in MESSAGES_PARAMS, f"no Messages parameter path leads the message: {message!r}"


def sse_events(response: httpx.Response) -> list[tuple[str | None, Any]]:
    """Each SSE event of a stream: its `event:` name and its parsed data; comments skipped."""
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
            name = None
    return events


def check_responses_stream(response: httpx.Response) -> None:
    events = sse_events(response)
    assert events and events[0][1]["type"] == "response.created", events[:2]
    assert all(data != "[DONE]" for _, data in events)
    assert [data["sequence_number"] for _, data in events] == sorted({data["sequence_number"] for _, data in events})
    assert events[-1][1]["type"] in ("response.completed", "response.incomplete", "response.failed"), events[-1]
    for name, data in events:
        assert name == data["type"]
    if events[-1][1]["type"] == "response.failed":
        error = events[-1][1]["response"]["error"]
        assert error["code"] not in ("server_error", "internal_error"), f"a crash: {error}"


def check_messages_stream(response: httpx.Response) -> None:
    events = sse_events(response)
    assert events and events[0][1]["type"] == "message_start", events[:2]
    for name, data in events:
        assert name == data["type"]
    last = events[-1][1]
    assert last["type"] in ("message_stop", "error"), last
    if last["type"] == "error":
        anthropic_error(last, 0)


class Exchanges:
    """What the examples sent and got, for the checks made once every example has run."""

    def __init__(self) -> None:
        self.generations: dict[str, Any] = {}  # X-Generation-Id → the payload that got it


def send(client: httpx.Client, path: str, payload: Any, seen: Exchanges) -> None:
    """Send one request (streamed when it asks to be) and check its answer in the path's dialect."""
    streamed = isinstance(payload, dict) and payload.get("stream") is True and path != COUNT_TOKENS
    shape = openai_error if path == RESPONSES else anthropic_error
    headers = {"content-type": "application/json"}
    with client.stream("POST", path, content=encode(payload), headers=headers) as response:
        status = response.status_code
        assert status < 500, response.read().decode(errors="replace")[:500]
        generation = response.headers.get("x-generation-id")
        if generation is not None:
            seen.generations[generation] = payload
        if status >= 400:
            assert response.headers["content-type"].startswith("application/json")
            shape(json.loads(response.read()), status)
            return
        if path != COUNT_TOKENS:
            assert generation is not None, "a served request without its generation id"
        if streamed:
            assert response.headers["content-type"].startswith("text/event-stream")
            (check_responses_stream if path == RESPONSES else check_messages_stream)(response)
            return
        answer = json.loads(response.read())
        if path == RESPONSES:
            assert answer["object"] == "response" and answer["status"] in ("completed", "incomplete"), answer
        elif path == MESSAGES:
            assert answer["type"] == "message" and answer["role"] == "assistant", answer
        else:
            assert isinstance(answer["input_tokens"], int) and answer["input_tokens"] >= 0, answer


def assert_recorded(url: str, seen: Exchanges) -> None:
    """Every generation id a client got has its activity record (the writer flushes within a second)."""
    missing = dict(seen.generations)
    deadline = time.monotonic() + 10
    with httpx.Client(base_url=url, timeout=10) as client:
        while missing and time.monotonic() < deadline:
            for generation in list(missing):
                if client.get("/api/v1/generation", params={"id": generation}).status_code == 200:
                    del missing[generation]
            if missing:
                time.sleep(0.2)
    assert not missing, f"{len(missing)} request(s) left no activity record, e.g. {next(iter(missing.values()))!r}"


@contextmanager
def fuzzing(server: tuple[str, ErrorLog], path: str) -> Iterator[tuple[Callable[[Any], None], Exchanges]]:
    """The per-example property for one path (one keep-alive connection for all), and what the examples got."""
    url, errors = server
    seen = Exchanges()
    with httpx.Client(base_url=url, timeout=30) as client:

        def check(payload: Any) -> None:
            before = len(errors.records)
            send(client, path, payload, seen)
            crashes = [r.getMessage() for r in errors.records[before:]]
            assert crashes == [], crashes

        yield check, seen


HI = [{"role": "user", "content": "Hi"}]


def test_responses(surfaces_server: tuple[str, ErrorLog]) -> None:
    # Crashes and leaks found before: they run on every profile, before the drawn examples.
    @example(payload={"model": "fusion/trio", "input": [{"type": nested(100)}]})  # a 500: an unhashable type
    @example(payload={"model": "fusion/trio", "input": [{"type": "reasoning"}]})  # named chat's 'messages'
    @example(payload={"model": "fake/plain", "input": "Hi", "metadata": nested(300)})
    @FUZZ
    @given(payload=mostly(responses_request, junk, odds=15))
    def run(payload: Any) -> None:
        check(payload)

    with fuzzing(surfaces_server, RESPONSES) as (check, seen):
        run()
    assert_recorded(surfaces_server[0], seen)


def test_messages(surfaces_server: tuple[str, ErrorLog]) -> None:
    @example(payload={"model": "fake/plain", "max_tokens": 10, "messages": HI, "metadata": nested(300)})
    @FUZZ
    @given(payload=mostly(messages_request, junk, odds=15))
    def run(payload: Any) -> None:
        check(payload)

    with fuzzing(surfaces_server, MESSAGES) as (check, seen):
        run()
    assert_recorded(surfaces_server[0], seen)


def test_count_tokens(surfaces_server: tuple[str, ErrorLog]) -> None:
    @FUZZ
    @given(payload=mostly(count_tokens_request, junk, odds=15))
    def run(payload: Any) -> None:
        check(payload)

    with fuzzing(surfaces_server, COUNT_TOKENS) as (check, seen):
        run()
    assert seen.generations == {}  # counting runs nothing, and records nothing
