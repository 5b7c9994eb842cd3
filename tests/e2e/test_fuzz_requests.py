"""Property: whatever a client sends to /v1/chat/completions, the real server answers without a 5xx, and every
error is OpenAI-shaped — in the body before the first byte, or as an error chunk then [DONE] in a stream.

Requests are drawn over the whole request schema (tests/e2e/strategies.py). The fast suite runs a fixed,
derandomized set of examples with no example database, so CI sees the same requests every run; set
FUZZ_PROFILE=deep for a long random run (thousands of examples, new ones each time).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings

from e2e.conftest import TRIO, judge_script
from e2e.strategies import chat_request, junk, mostly, nested
from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream
from openfusion.app import create_app
from openfusion.settings import ProviderConfig, Settings

CHAT = "/v1/chat/completions"
ERROR_FIELDS = {"message", "type", "param", "code"}

settings.register_profile(
    "fuzz-fast", max_examples=250, derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
settings.register_profile(
    "fuzz-deep", max_examples=4000, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
# Not an OPENFUSION_ variable: those are settings, and the tests clear them.
PROFILE = "fuzz-deep" if os.environ.get("FUZZ_PROFILE") == "deep" else "fuzz-fast"


class ErrorLog(logging.Handler):
    """ERROR records of openfusion's and uvicorn's loggers: a crash shows here even when the client got a 4xx."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def fuzz_served(fake: FakeUpstream, upstream_url: str, root: Path, **activity: Any) -> Iterator[tuple[str, ErrorLog]]:
    """One openfusion (fake/* provider, trio preset, SQLite activity in `root`) for every example of a fuzz;
    its URL and the ERROR records it logs."""
    fake.reset()
    fake.script("judge", judge_script())
    presets = root / "presets"
    presets.mkdir()
    (presets / "trio.toml").write_text(TRIO)
    app_settings = Settings(
        providers=[
            ProviderConfig(name="fake", base_url=f"{upstream_url}/v1", api_key_env="FAKE_KEY", models=["fake/*"],
                           strip_prefix=True)
        ],
        builtin_providers=False,
        presets_dir=presets,
        default_preset="trio",
        retry={"max_attempts": 1},
        activity={"path": root / "activity.sqlite3", **activity},
    )  # fmt: skip
    errors = ErrorLog()
    loggers = [logging.getLogger(name) for name in ("openfusion", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(errors)
    try:
        with serve_in_thread(create_app(app_settings, environ={"FAKE_KEY": "sk-fake"})) as url:
            yield url, errors
    finally:
        for logger in loggers:
            logger.removeHandler(errors)
        fake.reset()


@pytest.fixture(scope="module")
def fuzz_server(
    fake_upstream: tuple[FakeUpstream, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ErrorLog]]:
    """The chat fuzz's server."""
    with fuzz_served(*fake_upstream, tmp_path_factory.mktemp("fuzz")) as served:
        yield served


def assert_error_shape(error: Any, where: str) -> None:
    """An OpenAI error object: message, type, param, code; no traceback and no internal error."""
    assert isinstance(error, dict) and set(error) >= ERROR_FIELDS, f"{where}: {error!r}"
    assert isinstance(error["message"], str) and error["message"], where
    assert isinstance(error["type"], str), where
    assert error["param"] is None or isinstance(error["param"], str), where
    assert error["code"] is None or isinstance(error["code"], str | int), where
    assert error["code"] != "internal_error", f"{where}: a crash: {error['message']}"
    assert "Traceback" not in error["message"], where


def check_stream(response: httpx.Response) -> None:
    """A 200 stream is SSE whose data lines are JSON chunks then [DONE]; an error chunk is the last before [DONE]."""
    events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(event) for event in events[:-1]]
    for position, chunk in enumerate(chunks):
        assert isinstance(chunk, dict), chunk
        if "error" in chunk:
            assert position == len(chunks) - 1, "an error chunk must be the last before [DONE]"
            assert_error_shape(chunk["error"], "error chunk")


def check_answer(client: httpx.Client, payload: Any) -> None:
    """Send one request (streamed when it asks to be) and check the property."""
    streamed = isinstance(payload, dict) and payload.get("stream") is True
    with client.stream("POST", CHAT, json=payload) as response:
        assert response.status_code < 500, response.read().decode(errors="replace")[:500]
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith("application/json")
            assert_error_shape(json.loads(response.read()).get("error"), f"HTTP {response.status_code}")
        elif streamed and response.headers["content-type"].startswith("text/event-stream"):
            check_stream(response)
        else:
            assert isinstance(json.loads(response.read()), dict)


HI = [{"role": "user", "content": "Hi"}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
AGENT_STEP = [HI[0], {"role": "assistant", "content": None}, {"role": "tool", "content": "42"}, HI[0]]


def _with_tool_calls(tool_calls: Any) -> list[dict[str, Any]]:
    return [{**m, "tool_calls": tool_calls} if m["role"] == "assistant" else m for m in AGENT_STEP]


def _excluding(value: Any) -> list[dict[str, Any]]:
    return [{"id": "fusion", "tools": [{"type": "web_fetch", "parameters": {"excluded_domains": value}}]}]


# Crashes found before (each a 500 then): they run on every profile, before the drawn examples.
@example(payload={"model": "fusion/trio", "messages": _with_tool_calls(5)})
@example(payload={"model": "fusion/trio", "messages": _with_tool_calls([{"function": "lookup"}]), "stream": True})
@example(payload={"model": "fusion/trio", "messages": HI, "plugins": _excluding(5)})
@example(payload={"model": "fusion/trio", "messages": HI, "plugins": _excluding(True), "stream": True})
@example(payload={"model": "fake/plain", "messages": HI, "metadata": nested(300)})
@example(payload={"model": "fusion/trio", "messages": HI, "response_format": {"type": "json_object", "x": nested(300)}})
# A call no tool message answers: a provider's 400 told as a 502 once the panel and the judge had run.
@example(payload={"model": "fusion/trio", "messages": [*HI, {"role": "assistant", "tool_calls": [CALL]}]})
@settings(settings.get_profile(PROFILE))
@given(payload=mostly(chat_request, junk, odds=15))
def test_no_request_gets_a_5xx_or_a_malformed_error(fuzz_server: tuple[str, ErrorLog], payload: Any) -> None:
    url, errors = fuzz_server
    before = len(errors.records)
    with httpx.Client(base_url=url, timeout=30) as client:
        check_answer(client, payload)
    crashes = [r.getMessage() for r in errors.records[before:]]
    assert crashes == [], crashes
