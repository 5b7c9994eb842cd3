"""A response ends only once its activity record is stored: a server killed right after loses no record.

The real server (`openfusion serve`) is SIGKILLed (its whole process group) the moment the SDK has
seen the last request end; its activity writer batches for a minute, so a record still queued then
would be lost. With PostgreSQL (replicas) `record_before_end` is on by default; SQLite opts in.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import psycopg
import pytest

from e2e.processes import Served, provider_config, serve
from fakes.upstream import FakeUpstream, Script

pytestmark = pytest.mark.e2e

HI = [{"role": "user", "content": "Hi"}]
BATCHING = "[activity]\nflush_interval_s = 60\n{extra}"  # a record queued when the server dies is lost


# Each client is closed when its request is done: the server is killed right after, and a pooled connection left
# open to it would be found by the garbage collector in some later test, as an unclosed socket.
def _chat(url: str, model: str, *, stream: bool) -> str:
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30) as client:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=HI, stream=stream)  # type: ignore[call-overload]
        if stream:
            assert [c.choices[0].finish_reason for c in raw.parse() if c.choices][-1] == "stop"
        else:
            assert raw.parse().choices[0].message.content
    return str(raw.headers["x-generation-id"])


def _messages(url: str) -> str:
    with anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=30) as client:
        raw = client.messages.with_raw_response.create(model="fusion/trio", max_tokens=100, messages=HI, stream=True)
        assert [event.type for event in raw.parse()][-1] == "message_stop"
    return str(raw.headers["x-generation-id"])


def _responses(url: str) -> str:
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30) as client:
        raw = client.responses.with_raw_response.create(model="fusion/trio", input="Hi", stream=True)
        assert [event.type for event in raw.parse()][-1] == "response.completed"
    return str(raw.headers["x-generation-id"])


REQUESTS: dict[str, Callable[[str], str]] = {
    "fusion": lambda url: _chat(url, "fusion/trio", stream=False),
    "fusion, streamed": lambda url: _chat(url, "fusion/trio", stream=True),
    "pass-through": lambda url: _chat(url, "fake/a", stream=False),
    "pass-through, streamed": lambda url: _chat(url, "fake/a", stream=True),
    "messages, streamed": _messages,
    "responses, streamed": _responses,
}


def _served_then_killed(
    fake_upstream: Any, presets_dir: Path, workdir: Path, *, extra: str, env: dict[str, str], kinds: list[str]
) -> list[str]:
    """Each kind of request once, then SIGKILL the moment the last one ended; their generation ids."""
    _, upstream_url = fake_upstream
    config = provider_config(upstream_url, extra=BATCHING.format(extra=extra))
    with serve(config, presets_dir, workdir, env=env) as served:
        ids = [REQUESTS[kind](served.url) for kind in kinds]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(served.process.pid, signal.SIGKILL)
    return ids


def test_every_surface_s_record_is_stored_before_its_end_with_postgresql(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path, postgres_url: str
) -> None:
    upstream.script("synth", Script(chunks=["The sky ", "is blue."]))
    kinds = list(REQUESTS)
    ids = _served_then_killed(
        fake_upstream, presets_dir, tmp_path, extra="", env={"DATABASE_URL": postgres_url}, kinds=kinds
    )
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT id, status FROM generations WHERE id = ANY(%s)", (ids,)).fetchall()
        calls = conn.execute("SELECT generation_id, status FROM calls WHERE generation_id = ANY(%s)", (ids,)).fetchall()
    assert dict(rows) == dict.fromkeys(ids, "ok"), {kind: i for kind, i in zip(kinds, ids, strict=True)}
    # Whole records: every upstream call ended well (a pass-through's at its [DONE]), none left "cancelled".
    assert {status for _, status in calls} == {"ok"}
    assert {gid for gid, _ in calls} == set(ids)


def test_sqlite_waits_for_the_record_when_asked(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """SQLite (one host) batches off the response's path unless `record_before_end = true`."""
    database = tmp_path / "activity.sqlite3"
    extra = f'path = "{database}"\nrecord_before_end = true\n'
    (gid,) = _served_then_killed(
        fake_upstream, presets_dir, tmp_path / "server", extra=extra, env={}, kinds=["fusion, streamed"]
    )
    with sqlite3.connect(database) as conn:
        stored = conn.execute("SELECT id FROM generations WHERE id = ?", (gid,)).fetchall()
    assert stored == [(gid,)]


# The request, the event its stream ends with and the record's status, on the surfaces whose streams have no [DONE].
TERMINAL: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "messages": (
        "/v1/messages",
        {"model": "fusion/trio", "max_tokens": 100, "messages": HI, "stream": True},
        "message_stop",
        "ok",
    ),
    "responses": ("/v1/responses", {"model": "fusion/trio", "input": "Hi", "stream": True}, "response.completed", "ok"),
    "responses, failed": (  # the synthesizer breaks off mid-answer
        "/v1/responses",
        {"model": "fusion/trio", "input": "Hi", "stream": True},
        "response.failed",
        "error",
    ),
    "responses, relayed": (  # a provider's own Responses stream, relayed as it comes
        "/v1/responses",
        {"model": "native/plain", "input": "Hi", "stream": True},
        "response.completed",
        "ok",
    ),
}
# A provider that takes Responses requests itself.
NATIVE = (
    '[[providers]]\nname = "native"\nbase_url = "{url}/v1"\nmodels = ["native/*"]\nstrip_prefix = true\n'
    "responses = true\n"
)


def _killed_at_terminal_event(served: Served, path: str, body: dict[str, Any], terminal: str) -> str:
    """Read the stream line by line like a client that stops at its terminal event; SIGKILL the server then."""
    with httpx.stream("POST", f"{served.url}{path}", json=body, timeout=30) as response:
        assert response.status_code == 200
        gid = str(response.headers["x-generation-id"])
        for line in response.iter_lines():
            if line.startswith("data: ") and orjson.loads(line[6:]).get("type") == terminal:
                os.killpg(served.process.pid, signal.SIGKILL)  # the client has seen the end: nothing more
                return gid
    raise AssertionError(f"the stream ended without {terminal}")


@pytest.mark.parametrize("case", list(TERMINAL))
def test_the_record_is_stored_before_a_stream_s_terminal_event(
    case: str,
    fake_upstream: Any,
    upstream: FakeUpstream,
    presets_dir: Path,
    tmp_path: Path,
    postgres_url: str,
) -> None:
    """Messages and Responses streams end with an event, not [DONE]: the record is stored before it is sent."""
    cut = 1 if case.endswith("failed") else None
    upstream.script("synth", Script(chunks=["The sky ", "is blue."], cut_stream_after=cut))
    _, upstream_url = fake_upstream
    config = provider_config(upstream_url, extra=BATCHING.format(extra=NATIVE.format(url=upstream_url)))
    path, body, terminal, status = TERMINAL[case]
    with serve(config, presets_dir, tmp_path, env={"DATABASE_URL": postgres_url}) as served:
        gid = _killed_at_terminal_event(served, path, body, terminal)
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT status FROM generations WHERE id = %s", (gid,)).fetchall()
    assert rows == [(status,)]
