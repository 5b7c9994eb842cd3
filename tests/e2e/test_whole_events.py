"""A relayed stream reaches its client in whole events only, on every surface that relays a provider's stream.

A provider's read can end in the middle of an event. Relayed as it came, half an event was completed by the blank line
before the error openfusion adds when the stream then breaks or the shutdown stops it: an event the SDKs parse and fail
on, with a JSON error, before they read the error. Each test breaks or stops a stream in the middle of an event (the
provider writes the first half of an event with the whole one before it, so that a client that has read the one, the
server has read the other) and reads it with the surface's own SDK. An event whose data spans several `data:` lines
(which SSE allows) was taken for one that is not JSON by the native relays, which read each line alone.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from e2e.conftest import trio_provider
from fakes.anthropic_api import FakeAnthropic, Reply
from fakes.upstream import FakeUpstream, Script, wait_until
from openfusion.settings import ProviderConfig, Settings

from .test_activity_wiring import generation
from .test_messages_native import Tap as MessagesTap
from .test_messages_native import generation as messages_generation
from .test_messages_native import serve_native, whole_events_only
from .test_messages_native import tapped_sdk as tapped_anthropic_sdk
from .test_shutdown import served

HI = [{"role": "user", "content": "Hi"}]


class Tap(httpx.HTTPTransport):
    """The openai SDK's transport, keeping the bytes of each response as it reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.read = bytearray()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        return httpx.Response(response.status_code, headers=response.headers, extensions=response.extensions,
                              stream=_Tapped(response.stream, self.read))  # fmt: skip


class _Tapped(httpx.SyncByteStream):
    def __init__(self, stream: Any, read: bytearray) -> None:
        self._stream, self._read = stream, read

    def __iter__(self) -> Iterator[bytes]:
        for part in self._stream:
            self._read.extend(part)
            yield part

    def close(self) -> None:
        self._stream.close()


def tapped_sdk(url: str, tap: Tap) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0,
                         http_client=httpx.Client(transport=tap, timeout=60))  # fmt: skip


def read_chat(client: openai.OpenAI, model: str, result: dict[str, Any]) -> None:
    """Stream a chat completion with the SDK: its text as it comes into `result["text"]`, what it raised into
    `result["error"]`."""
    text = result["text"] = []
    try:
        for chunk in client.chat.completions.create(model=model, messages=HI, stream=True):  # type: ignore[arg-type]
            text.extend(choice.delta.content or "" for choice in chunk.choices)
    except Exception as exc:  # whatever the SDK raises: the test says which it must be
        result["error"] = exc


def test_a_pass_through_stream_broken_off_in_the_middle_of_an_event_ends_with_the_error_the_sdk_raises(
    upstream: FakeUpstream, server: str
) -> None:
    """The provider drops its connection after the first half of an event: the openai SDK yields the chunks before it,
    then raises openfusion's error chunk (`upstream_unreachable`), not a JSON error for the half event."""
    upstream.script("plain", Script(chunks=["first ", "second"], cut_stream_after=1, half_event=True))
    tap, result = Tap(), {}
    with tapped_sdk(server, tap) as client:
        read_chat(client, "fake/plain", result)

    call = upstream.calls_for("plain")[0]
    assert call.fault == "cut" and call.half  # the fault: cut after the first half of an event
    assert "".join(result["text"]) == "first "
    error = result.get("error")
    assert isinstance(error, openai.APIError), repr(error)
    assert isinstance(error.body, dict) and error.body["code"] == "upstream_unreachable", error.body
    assert whole_events_only(bytes(tap.read)), bytes(tap.read)


def test_a_pass_through_stream_the_shutdown_stops_in_the_middle_of_an_event_ends_with_the_error_the_sdk_raises(
    fake_upstream: tuple[FakeUpstream, str], upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """The provider is silent after the first half of an event when the grace period ends: the openai SDK yields the
    chunk before it, then raises the `server_shutting_down` error chunk."""
    _, upstream_url = fake_upstream
    upstream.script("drip", Script(chunks=["first ", "second"], chunk_interval_s=60, half_event=True))
    tap, result = Tap(), {}
    with served(upstream_url, presets_dir, tmp_path, grace_s=1) as (url, process), tapped_sdk(url, tap) as client:
        thread = threading.Thread(target=read_chat, args=(client, "fake/drip", result))
        thread.start()
        wait_until(lambda: b'"first "' in tap.read, timeout=20)  # (read with the half event written with it)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        thread.join(15)

    assert upstream.calls_for("drip")[0].half  # the fault: stopped in the middle of an event
    assert "".join(result["text"]) == "first "
    error = result.get("error")
    assert isinstance(error, openai.APIError), repr(error)
    assert isinstance(error.body, dict) and error.body["code"] == "server_shutting_down", error.body
    assert whole_events_only(bytes(tap.read)), bytes(tap.read)


def test_a_native_responses_stream_the_shutdown_stops_after_a_lone_event_line_ends_failed(
    fake_upstream: tuple[FakeUpstream, str], upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """The provider, speaking the Responses API, is silent after the `event:` line of its next event when the grace
    period ends: the openai SDK reads `response.failed` (`server_shutting_down`), not an empty event it cannot parse."""
    _, upstream_url = fake_upstream
    upstream.script("drip", Script(content="first second", break_stream="event line"))
    tap, events, result = Tap(), [], {}

    def read(client: openai.OpenAI) -> None:
        try:
            events.extend(client.responses.create(model="fake/drip", input="Hi", stream=True))
        except Exception as exc:  # whatever the SDK raises: the test says there must be none
            result["error"] = exc

    with (
        served(upstream_url, presets_dir, tmp_path, grace_s=1, extra="responses = true\n") as (url, process),
        tapped_sdk(url, tap) as client,
    ):
        thread = threading.Thread(target=read, args=(client,))
        thread.start()
        wait_until(lambda: b'"delta":"first "' in tap.read, timeout=20)  # (read with the lone line written with it)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        thread.join(15)

    assert upstream.calls_for("drip")[0].half == b"event: response.output_text.delta\n"  # the fault: sent, alone
    assert "error" not in result, repr(result.get("error"))
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["first "]  # type: ignore[union-attr]
    last = events[-1]
    assert last.type == "response.failed", events
    assert last.response.error.code == "server_shutting_down", last  # type: ignore[union-attr]
    assert whole_events_only(bytes(tap.read)), bytes(tap.read)


@pytest.fixture
def native_server(
    upstream: FakeUpstream, fake_upstream: tuple[FakeUpstream, str], start_server: Callable[..., Any], tmp_path: Path
) -> Iterator[str]:
    """openfusion with `native/*` on a provider that speaks the Responses API."""
    _, url = fake_upstream
    native = ProviderConfig(name="native", base_url=f"{url}/v1", api_key_env="FAKE_KEY", models=["native/*"],
                            strip_prefix=True, responses=True)  # fmt: skip
    server: AbstractContextManager[str] = start_server(
        providers=[native, trio_provider(url)], activity={"path": tmp_path / "a.db"}
    )
    with server as base:
        yield base


def test_a_native_responses_event_whose_data_spans_two_lines_is_relayed_as_one(
    upstream: FakeUpstream, native_server: str
) -> None:
    """Each event's JSON on two `data:` lines: the SDK reads the whole response, which openfusion keeps (marked
    stored) and records as answered, as for events on one line."""
    upstream.script("plain", Script(content="One two.", split_data=True, reply_id="resp_split"))
    tap = Tap()
    with tapped_sdk(native_server, tap) as client:
        raw = client.responses.with_raw_response.create(model="native/plain", input="Hi", stream=True)
        events = list(raw.parse())
        kept = client.responses.retrieve("resp_split")

    assert b'"type":"response.output_text.delta",\ndata: "' in tap.read  # the fault: relayed as the provider split it
    last = events[-1]
    assert last.type == "response.completed", [event.type for event in events]
    response = last.response  # type: ignore[union-attr]
    assert response.output_text == "One two." and response.store is True  # (the event rewritten, marked stored)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]  # type: ignore[union-attr]
    assert deltas == ["One ", "two."]
    assert kept.status == "completed" and kept.output_text == "One two."
    record = generation(native_server, raw.headers["x-generation-id"])
    assert (record["status"], record["tokens_completion"]) == ("ok", 7), record


def test_a_native_messages_event_whose_data_spans_two_lines_is_relayed_as_one(
    anthropic_native: tuple[FakeAnthropic, str], make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Each event's JSON on two `data:` lines: the anthropic SDK reads the whole message, recorded as answered."""
    fake, native_url = anthropic_native
    fake.replies = [Reply(split_data=True)]
    body: dict[str, Any] = {"model": "claude/opus", "max_tokens": 10, "messages": HI}
    tap = MessagesTap()
    with (
        serve_native(native_url, make_settings, tmp_path) as url,
        tapped_anthropic_sdk(url, tap) as client,
        client.messages.stream(**body) as stream,
    ):
        message = stream.get_final_message()
        record = messages_generation(url, stream.response.headers["x-generation-id"])

    assert b'"type":"message_start",\ndata: "' in tap.read  # the fault: relayed as the provider split it
    assert message.content[0].text == "Native answer." and message.stop_reason == "end_turn"  # type: ignore[union-attr]
    assert (record["status"], record["tokens_completion"]) == ("ok", 4), record
