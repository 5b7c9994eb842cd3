"""SIGTERM: stop accepting, let in-flight requests finish within the grace period, then cancel cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from fakes.anthropic_api import FakeAnthropic, Reply
from fakes.upstream import FakeUpstream, Script, wait_until

from .test_messages_native import Tap, read_failed_stream, tapped_sdk, whole_events_only

HI = [{"role": "user", "content": "Hi"}]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(
    upstream_url: str, presets_dir: Path, tmp_path: Path, *, grace_s: float, extra: str = ""
) -> Iterator[tuple[str, Any]]:
    """`openfusion serve` as a real process; yields its URL and the process."""
    config = tmp_path / "openfusion.toml"
    config.write_text(
        f'default_preset = "trio"\nshutdown_grace_s = {grace_s}\n\n[[providers]]\nname = "fake"\n'
        f'base_url = "{upstream_url}/v1"\nmodels = ["fake/*"]\nstrip_prefix = true\n{extra}'
    )
    port = _free_port()
    command = [
        str(Path(sys.executable).parent / "openfusion"),
        "serve",
        "--port",
        str(port),
        "--config",
        str(config),
        "--presets",
        str(presets_dir),
        "--no-access-log",
    ]
    # Its log goes to a file: a pipe nobody reads while it runs would fill and block the server.
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60  # a loaded machine can take a while to start it
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
            assert process.poll() is None and time.monotonic() < deadline, "openfusion serve did not start"
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        log.close()


def _post_in_background(url: str, body: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["response"] = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
        except httpx.HTTPError as exc:
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_sigterm_lets_an_in_flight_request_finish(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    _, upstream_url = fake_upstream
    for model in "abc":
        upstream.script(model, Script(delay_s=1.0))

    with served(upstream_url, presets_dir, tmp_path, grace_s=10) as (url, process):
        thread, result = _post_in_background(url, {"model": "fusion", "messages": HI})
        wait_until(lambda: len(upstream.calls) == 3)
        process.send_signal(signal.SIGTERM)
        thread.join(15)
        assert result["response"].status_code == 200
        assert result["response"].json()["choices"][0]["message"]["content"] == "Answer from synth."
        # uvicorn re-raises the signal once it has shut down cleanly.
        assert process.wait(timeout=10) == 0  # a clean stop
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(f"{url}/healthz", timeout=1)


def test_sigterm_cancels_what_outlives_the_grace_period(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    _, upstream_url = fake_upstream
    for model in "abc":
        upstream.script(model, Script(delay_s=60))

    with served(upstream_url, presets_dir, tmp_path, grace_s=1) as (url, process):
        thread, _ = _post_in_background(url, {"model": "fusion", "stream": True, "messages": HI})
        wait_until(lambda: len(upstream.calls) == 3)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        stopped = time.monotonic() - sent
        thread.join(15)
    assert stopped < 10  # the grace period (1 s) bounds the stop, not the 60 s panelists
    wait_until(lambda: all(call.disconnected for call in upstream.calls))  # their calls were closed


def _request_in_background(url: str, body: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Send one request from a thread; the result holds its status, body text and any transport error."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
                result["status"] = response.status_code
                result["content_type"] = response.headers.get("content-type", "")
                result["started"] = True
                result["text"] = response.read().decode()
        except httpx.HTTPError as exc:
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _data_lines(text: str) -> list[Any]:
    lines = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def test_past_the_grace_period_every_request_ends_with_an_error_and_is_recorded(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM with 20 requests in flight on a slow upstream: each client reads an error, each is recorded."""
    _, upstream_url = fake_upstream
    for model in "abc":
        upstream.script(model, Script(delay_s=60))
    upstream.script("slow", Script(delay_s=60))  # non-streamed pass-through: nothing before the grace ends
    upstream.script("drip", Script(chunks=["first ", "second"], chunk_interval_s=60))  # a streamed one: a token
    activity = tmp_path / "activity.sqlite3"
    bodies = [
        *[{"model": "fusion", "messages": HI, "stream": True}] * 5,
        *[{"model": "fusion", "messages": HI}] * 5,
        *[{"model": "fake/drip", "messages": HI, "stream": True}] * 5,
        *[{"model": "fake/slow", "messages": HI}] * 5,
    ]

    with served(upstream_url, presets_dir, tmp_path, grace_s=1, extra=f'\n[activity]\npath = "{activity}"\n') as (
        url,
        process,
    ):
        requests = [_request_in_background(url, body) for body in bodies]
        wait_until(lambda: len(upstream.calls) == 5 * 3 + 5 * 3 + 5 + 5, timeout=20)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0  # a clean stop
        for thread, _ in requests:
            thread.join(15)

    results = [result for _, result in requests]
    assert all("error" not in result for result in results), [r.get("error") for r in results]
    for result in results[:5] + results[10:15]:  # streams: an error chunk, then [DONE]
        assert result["status"] == 200 and result["content_type"].startswith("text/event-stream")
        payloads = _data_lines(result["text"])
        assert payloads[-1] == "[DONE]", result["text"]
        last = payloads[-2]
        assert last["choices"][0]["finish_reason"] == "error" and last["error"]["code"] == "server_shutting_down"
    assert all("first " in result["text"] for result in results[10:15])  # the fault: cut mid-answer
    for result in results[5:10] + results[15:]:  # plain requests: an OpenAI-shaped 503
        assert result["status"] == 503, result["text"]
        assert json.loads(result["text"])["error"]["code"] == "server_shutting_down"
    wait_until(lambda: all(call.disconnected for call in upstream.calls))  # every upstream call was closed
    log = (tmp_path / "serve.log").read_text()
    with sqlite3.connect(activity) as conn:
        rows = conn.execute("SELECT status, failure_reason FROM generations").fetchall()
    assert len(rows) == 20, log
    assert set(rows) == {("error", "server_shutting_down")}
    assert "dropped" not in log


def test_a_stream_whose_client_stopped_reading_ends_quietly_at_the_end_of_the_grace_period(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """A client that stops reading a long stream blocks its response in flow control: the grace period's end cancels
    it, which used to escape as 'Exception in ASGI application' with a traceback at ERROR."""
    _, upstream_url = fake_upstream
    upstream.script("big", Script(chunks=["x" * 65536] * 300))
    with served(upstream_url, presets_dir, tmp_path, grace_s=1) as (url, process):
        port = int(url.rsplit(":", 1)[1])
        body = json.dumps({"model": "fake/big", "stream": True, "messages": HI}).encode()
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            assert client.recv(1024).startswith(b"HTTP/1.1 200")  # the stream began; the client reads no more
            wait_until(lambda: bool(upstream.calls_for("big")), timeout=10)
            time.sleep(0.5)  # the server's buffers fill; its writes wait for the client
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=20)  # (uvicorn ends by re-raising SIGTERM: status -15)
    log = (tmp_path / "serve.log").read_text(errors="replace")
    assert "Exception in ASGI application" not in log and "Traceback" not in log, log[-3000:]
    # Nor as uvicorn's "ASGI callable returned without completing response" at ERROR: one warning.
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert [line for line in lines if line["level"] in ("error", "critical")] == [], log[-3000:]
    [told] = [line for line in lines if line["message"].startswith("response cut short at shutdown")]
    assert told["level"] == "warning" and told["generation_id"].startswith("gen-"), told


def _generations(activity: Path) -> list[tuple[str, str, str | None]]:
    """(requested model, status, failure reason) of each request the SQLite activity store recorded."""
    with sqlite3.connect(activity) as conn:
        return conn.execute("SELECT requested_model, status, failure_reason FROM generations").fetchall()


def _stopped_with_an_unread_stream(
    upstream_url: str, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path, *, settle_s: float
) -> tuple[str, list[tuple[str, str, str | None]]]:
    """Serve (grace period 1 s), open a stream of `fake/big` the client never reads, let it settle for `settle_s`,
    stop the server with SIGTERM: its log, and the requests it recorded."""
    activity = tmp_path / "activity.sqlite3"
    with (
        served(upstream_url, presets_dir, tmp_path, grace_s=1, extra=f'\n[activity]\npath = "{activity}"\n') as (
            url,
            process,
        ),
        _unread_stream_sdk(url) as sdk,
    ):
        stream = sdk.chat.completions.create(model="fake/big", messages=HI, stream=True)  # headers read, no more
        with stream:
            wait_until(lambda: bool(upstream.calls_for("big")), timeout=10)
            time.sleep(settle_s)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0  # a clean stop
    return (tmp_path / "serve.log").read_text(errors="replace"), _generations(activity)


def _unread_stream_sdk(url: str) -> openai.OpenAI:
    """The OpenAI SDK on connections with a 4 KiB receive buffer: a stream it opens and never reads holds the
    server's writes in flow control once a few MiB are out."""
    transport = httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
    http = httpx.Client(transport=transport, timeout=60)
    return openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, http_client=http)


def test_a_stream_the_servers_backstop_cancels_is_still_recorded(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """A pass-through stream whose client stopped reading while the provider was slow: the grace period's end stops
    the body while it waits on the provider, and its error chunk then waits on the client forever, so uvicorn's own
    cancellation (the backstop) ends the request. Its record used to be written only after the activity writer
    closed: lost, and the shutdown waited its whole drain timeout for it."""
    _, upstream_url = fake_upstream
    upstream.script("big", Script(chunks=["x" * (4 << 20), "tail"], chunk_interval_s=60))  # 4 MiB, then a long wait
    # The 4 MiB go out and fill the buffers; the body waits on the provider's next chunk.
    log, rows = _stopped_with_an_unread_stream(upstream_url, upstream, presets_dir, tmp_path, settle_s=2)
    assert "Cancel 1 running task(s)" in log, log[-3000:]  # the fault: uvicorn's backstop cancelled the request
    assert rows == [("fake/big", "error", "server_shutting_down")], log[-3000:]
    assert "still unrecorded" not in log and "dropped" not in log, log[-3000:]


def test_a_request_the_servers_backstop_cancels_is_told_in_one_warning(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """A stream whose client stopped reading outlives the grace period, and uvicorn's backstop cancels it: expected,
    yet uvicorn logged it as 'Exception in ASGI application' at ERROR with the CancelledError's traceback, and its
    cancelling at ERROR too, which operators read as a crash. One warning line for the request, with its id."""
    _, upstream_url = fake_upstream
    upstream.script("big", Script(chunks=["x" * (4 << 20), "tail"], chunk_interval_s=60))  # 4 MiB, then a long wait
    log, rows = _stopped_with_an_unread_stream(upstream_url, upstream, presets_dir, tmp_path, settle_s=2)
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert "Cancel 1 running task(s)" in log, log[-3000:]  # the fault: uvicorn's backstop cancelled the request
    assert "Exception in ASGI application" not in log and "Traceback" not in log, log[-3000:]
    assert [line for line in lines if line["level"] in ("error", "critical")] == []
    [told] = [line for line in lines if line["message"].startswith("request cancelled at shutdown")]
    assert told["level"] == "warning" and told["generation_id"].startswith("gen-"), told
    assert rows == [("fake/big", "error", "server_shutting_down")], log[-3000:]


def test_a_stream_cut_at_the_end_of_the_grace_period_is_not_recorded_as_whole(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """A pass-through stream whose client stopped reading mid-answer: the grace period's end cancels its response
    where it waits on the client. Its body, never closed, was recorded as a whole answer (ok) by the response's end;
    its relay, and the upstream response it reads, were left to the garbage collector. It is one the shutdown
    stopped, as those told so."""
    _, upstream_url = fake_upstream
    upstream.script("big", Script(chunks=["x" * 65536] * 300))  # ~19 MiB: more than every buffer on the way holds
    # The server's buffers fill; its writes wait for the client.
    log, rows = _stopped_with_an_unread_stream(upstream_url, upstream, presets_dir, tmp_path, settle_s=1)
    assert "grace period over: ending 1 request(s) in flight" in log, log[-3000:]  # the fault: stopped mid-answer
    assert '"level":"error"' not in log and "response cut short at shutdown" in log, log[-3000:]
    assert rows == [("fake/big", "error", "server_shutting_down")], log[-3000:]


def _raw_request(body: dict[str, Any]) -> bytes:
    raw = json.dumps(body).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(raw)}\r\n\r\n".encode()
        + raw
    )


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_response_held_behind_an_unread_one_is_recorded_when_the_backstop_cancels_it(
    stream: bool, fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """Two requests pipelined on one connection by a client that reads nothing: the first one's 16 MiB answer fills
    the buffers, so the second one's answer waits before its first byte (in flow control), past the grace period,
    until uvicorn's own cancellation (the backstop) ends it. Its response's background task, which records it (and
    for a stream closes its upstream response), was skipped: no record, and the shutdown waited its whole drain
    timeout for it."""
    _, upstream_url = fake_upstream
    upstream.script("big", Script(content="x" * (16 << 20)))
    upstream.script("small", Script(chunks=["Hello", " there"]))
    activity = tmp_path / "activity.sqlite3"
    with served(upstream_url, presets_dir, tmp_path, grace_s=1, extra=f'\n[activity]\npath = "{activity}"\n') as (
        url,
        process,
    ):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.sendall(
                _raw_request({"model": "fake/big", "messages": HI})
                + _raw_request({"model": "fake/small", "messages": HI, "stream": stream})
            )
            wait_until(lambda: bool(upstream.calls_for("small")), timeout=20)  # the second one is answered
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0  # a clean stop
    log = (tmp_path / "serve.log").read_text(errors="replace")
    assert "Cancel 1 running task(s)" in log, log[-3000:]  # the fault: uvicorn's backstop cancelled the second one
    assert "Exception in ASGI application" not in log and "request cancelled at shutdown" in log, log[-3000:]
    rows = _generations(activity)
    assert sorted(rows) == [("fake/big", "ok", None), ("fake/small", "cancelled", "cancelled")], log[-3000:]
    assert "still unrecorded" not in log and "dropped" not in log, log[-3000:]


def _responses_stream_stopped_at_grace(
    upstream: FakeUpstream, upstream_url: str, presets_dir: Path, tmp_path: Path, extra: str
) -> list[dict[str, Any]]:
    """The events of a Responses stream of `fake/drip` whose server was sent SIGTERM after its first token (a 1 s
    grace period: the stream outlives it)."""
    result: dict[str, Any] = {}

    def read(url: str) -> None:
        body = {"model": "fake/drip", "input": "Hi", "stream": True}
        with httpx.stream("POST", f"{url}/v1/responses", json=body, timeout=60) as response:
            result["events"] = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]

    with served(upstream_url, presets_dir, tmp_path, grace_s=1, extra=extra) as (url, process):
        thread = threading.Thread(target=read, args=(url,))
        thread.start()
        wait_until(lambda: len(upstream.calls) == 1, timeout=20)
        time.sleep(0.3)  # its first token relayed
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        thread.join(15)
    return result["events"]


def _retrieved_after_a_restart(
    upstream_url: str, presets_dir: Path, tmp_path: Path, extra: str, response_id: str
) -> Any:
    """The response `response_id` as a server started again on the same store gives it (the openai SDK's)."""
    with (
        served(upstream_url, presets_dir, tmp_path, grace_s=1, extra=extra) as (url, _),
        openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as client,
    ):
        return client.responses.retrieve(response_id)


def test_a_responses_stream_stopped_at_the_end_of_the_grace_period_is_kept_failed(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """A translated Responses stream the shutdown stops ends with `response.failed` (`server_shutting_down`): that
    response is kept, as any other that failed after it began, so a client retrieving it (from a replica, or this
    server once it is back) learns how it ended rather than getting a 404 for an id it was given."""
    _, upstream_url = fake_upstream
    upstream.script("drip", Script(chunks=["first ", "second"], chunk_interval_s=60))
    activity = tmp_path / "activity.sqlite3"
    extra = f'\n[activity]\npath = "{activity}"\n'
    events = _responses_stream_stopped_at_grace(upstream, upstream_url, presets_dir, tmp_path, extra)
    last = events[-1]
    assert last["type"] == "response.failed" and last["response"]["error"]["code"] == "server_shutting_down", events
    kept = _retrieved_after_a_restart(upstream_url, presets_dir, tmp_path, extra, last["response"]["id"])
    assert kept.status == "failed" and kept.error is not None and kept.error.code == "server_shutting_down"
    assert kept.output_text == "first "  # what was answered before the stop


def test_a_native_responses_stream_stopped_at_the_end_of_the_grace_period_is_kept_failed(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """The same for a stream relayed from a provider that speaks the Responses API itself: it ends with
    `response.failed` (`server_shutting_down`) for the response the provider began, which is kept failed, and the
    request is in the activity store as stopped by the shutdown."""
    _, upstream_url = fake_upstream
    upstream.script("drip", Script(content="first second", chunk_interval_s=60))
    activity = tmp_path / "activity.sqlite3"
    extra = f'responses = true\n\n[activity]\npath = "{activity}"\n'
    events = _responses_stream_stopped_at_grace(upstream, upstream_url, presets_dir, tmp_path, extra)
    assert upstream.calls[0].path == "/v1/responses"  # relayed as it came, not translated
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == ["first "]  # cut mid-answer
    numbers = [e["sequence_number"] for e in events]
    assert numbers == sorted(set(numbers))  # the event added comes next in order
    last = events[-1]
    assert last["type"] == "response.failed" and last["response"]["error"]["code"] == "server_shutting_down", events
    assert last["response"]["id"] == events[0]["response"]["id"] and last["response"]["store"] is True
    with sqlite3.connect(activity) as conn:
        rows = conn.execute("SELECT api_type, status, failure_reason FROM generations").fetchall()
    assert rows == [("responses", "error", "server_shutting_down")]
    kept = _retrieved_after_a_restart(upstream_url, presets_dir, tmp_path, extra, last["response"]["id"])
    assert kept.status == "failed" and kept.error is not None and kept.error.code == "server_shutting_down"
    assert kept.model == "drip" and kept.output == []  # no output item was done before the stop


@pytest.mark.parametrize("reply", [Reply(pause_after=4), Reply(half_after=4)], ids=["between events", "mid-event"])
def test_a_native_messages_stream_stopped_at_the_end_of_the_grace_period_ends_with_an_error_event(
    anthropic_native: tuple[FakeAnthropic, str], presets_dir: Path, tmp_path: Path, reply: Reply
) -> None:
    """A stream relayed from a provider that speaks Anthropic Messages itself, still open when the grace period ends
    (its provider silent for 60 s after a word, or in the middle of an event): the anthropic SDK gets the word, then
    raises Anthropic's `overloaded_error` for the `error` event that ends the stream (not a cut connection, nor a
    JSON error for the unfinished event); the provider's response is closed and the request recorded as stopped by
    the shutdown."""
    fake, native_url = anthropic_native
    fake.replies = [reply]
    activity = tmp_path / "activity.sqlite3"
    extra = (
        f'\n[[providers]]\nname = "claude"\nbase_url = "{native_url}/v1"\nmodels = ["claude/*"]\nstrip_prefix = true'
        f'\nmessages = true\n\n[activity]\npath = "{activity}"\n'
    )
    tap, result = Tap(), {}

    def read(url: str) -> None:
        with tapped_sdk(url, tap) as client:
            result["text"], result["error"] = read_failed_stream(client)

    with served("http://127.0.0.1:9", presets_dir, tmp_path, grace_s=1, extra=extra) as (url, process):
        thread = threading.Thread(target=read, args=(url,))
        thread.start()
        # The word relayed (read with the half event the provider wrote with it, when there is one): it now pauses.
        wait_until(lambda: b"Native " in tap.read, timeout=20)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        thread.join(15)

    log = (tmp_path / "serve.log").read_text(errors="replace")
    assert "grace period over: ending 1 request(s) in flight" in log, log[-3000:]  # the fault: stopped mid-answer
    assert result["text"] == "Native " and whole_events_only(bytes(tap.read)), bytes(tap.read)
    assert bool(fake.calls[0].half) is (reply.half_after is not None)  # the fault: stopped in the middle of an event
    error = result["error"]
    assert error.body["type"] == "error" and error.body["error"]["type"] == "overloaded_error", error.body
    assert "shutting down" in error.body["error"]["message"]
    wait_until(lambda: fake.calls[0].disconnected, timeout=10)  # the provider's response was closed
    assert _generations_by_surface(activity) == [("messages", "error", "server_shutting_down")], log[-3000:]


def _generations_by_surface(activity: Path) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(activity) as conn:
        return conn.execute("SELECT api_type, status, failure_reason FROM generations").fetchall()


HOLD_S = 6.0  # the provider's wait before its answer's headers: longer than the short grace period, by far


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("grace_s", [30.0, 1.0], ids=["grace longer than the hold", "grace shorter than the hold"])
def test_a_native_messages_request_waiting_for_the_providers_headers_at_sigterm(
    anthropic_native: tuple[FakeAnthropic, str], presets_dir: Path, tmp_path: Path, stream: bool, grace_s: float
) -> None:
    """SIGTERM while a request relayed to a provider that speaks Anthropic Messages itself still waits for that
    provider's status and headers (nothing relayed yet, stream or not). A grace period longer than the wait: the answer
    completes. A shorter one: the anthropic SDK gets Anthropic's `overloaded_error` (529), a clean error rather than a
    dropped connection; the provider's call is closed and the request recorded as stopped by the shutdown."""
    fake, native_url = anthropic_native
    fake.replies = [Reply(hold_s=HOLD_S)]
    activity = tmp_path / "activity.sqlite3"
    extra = (
        f'\n[[providers]]\nname = "claude"\nbase_url = "{native_url}/v1"\nmodels = ["claude/*"]\nstrip_prefix = true'
        f'\nmessages = true\n\n[activity]\npath = "{activity}"\n'
    )
    result: dict[str, Any] = {}

    def ask(url: str) -> None:
        body: dict[str, Any] = {"model": "claude/opus", "max_tokens": 10, "messages": HI}
        with anthropic.Anthropic(base_url=url, api_key="k", max_retries=0, timeout=60) as client:
            try:
                if stream:
                    with client.messages.stream(**body) as events:
                        result["message"] = events.get_final_message()
                else:
                    result["message"] = client.messages.create(**body)
            except anthropic.APIError as exc:
                result["error"] = exc

    with served("http://127.0.0.1:9", presets_dir, tmp_path, grace_s=grace_s, extra=extra) as (url, process):
        thread = threading.Thread(target=ask, args=(url,))
        thread.start()
        wait_until(lambda: bool(fake.calls) and fake.calls[0].held, timeout=20)
        process.send_signal(signal.SIGTERM)  # the provider holds its answer's headers back
        assert process.wait(timeout=HOLD_S + 30) == 0  # a clean stop
        thread.join(15)

    log = (tmp_path / "serve.log").read_text(errors="replace")
    [call] = fake.calls
    assert call.body.get("stream", False) is stream
    if grace_s > HOLD_S:
        assert "error" not in result, result.get("error")
        assert result["message"].content[0].text == "Native answer."
        assert not call.disconnected
        assert _generations_by_surface(activity) == [("messages", "ok", None)], log[-3000:]
        return
    assert "grace period over: ending 1 request(s) in flight" in log, log[-3000:]  # the fault: stopped unanswered
    error = result.get("error")
    assert isinstance(error, anthropic.APIStatusError), result  # not a connection error: an answer it could read
    assert error.status_code == 529 and error.body["type"] == "error", error.body
    assert error.body["error"]["type"] == "overloaded_error" and "shutting down" in error.body["error"]["message"]
    wait_until(lambda: call.disconnected, timeout=10)  # the provider's call was closed, not left to finish
    assert _generations_by_surface(activity) == [("messages", "error", "server_shutting_down")], log[-3000:]
    assert "Traceback" not in log, log[-3000:]
