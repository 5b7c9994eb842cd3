"""A native Responses stream the provider breaks off before its terminal event ends as OpenAI's own failing stream
does: `response.failed` with the response so far, which is kept (read back failed) and recorded as failed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import openai
import pytest

from e2e.conftest import trio_provider
from fakes.upstream import FakeUpstream, Script
from openfusion.settings import ProviderConfig

from .test_activity_wiring import generation

READ_TIMEOUT_S = 3.0  # the provider's silence that ends a stalled stream


@pytest.fixture
def native_server(
    upstream: FakeUpstream, fake_upstream: tuple[FakeUpstream, str], start_server: Callable[..., Any], tmp_path: Path
) -> Iterator[str]:
    """openfusion with `native/*` on a provider that speaks the Responses API, its reads timed out after
    `READ_TIMEOUT_S`."""
    _, url = fake_upstream
    native = ProviderConfig(name="native", base_url=f"{url}/v1", api_key_env="FAKE_KEY", models=["native/*"],
                            strip_prefix=True, responses=True)  # fmt: skip
    server: AbstractContextManager[str] = start_server(
        providers=[native, trio_provider(url)],
        activity={"path": tmp_path / "a.db"},
        http={"read_timeout_s": READ_TIMEOUT_S},
    )
    with server as base:
        yield base


# How the provider breaks off, the script that does it, and what the request is recorded as failing with.
BREAKS = {
    "dropped": (Script(content="One two three four.", break_stream="drop", reply_id="resp_broken"),
                "upstream_unreachable", "lost its connection"),
    "read timeout": (Script(content="One two three four.", break_stream="stall", reply_id="resp_broken"),
                     "upstream_timeout", "timed out"),
    "closed early": (Script(content="One two three four.", end_stream_after=1, reply_id="resp_broken"),
                     "upstream_invalid_response", "the stream ended before the response was complete"),
    "malformed event": (Script(content="One two three four.", break_stream="malformed", reply_id="resp_broken"),
                        "upstream_invalid_response", "sent a stream event that is not JSON"),
    "error event": (Script(content="One two three four.", break_stream="error", error_message="the model crashed",
                           reply_id="resp_broken"), "upstream_error", "the model crashed"),
}  # fmt: skip


@pytest.mark.parametrize("how", list(BREAKS))
def test_a_native_stream_the_provider_breaks_off_ends_failed_is_kept_and_recorded(
    upstream: FakeUpstream, native_server: str, how: str
) -> None:
    script, reason, said = BREAKS[how]
    upstream.script("plain", script)
    with openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0) as client:
        raw = client.responses.with_raw_response.create(model="native/plain", input="Hi", stream=True)
        events = list(raw.parse())  # the SDK's stream parser takes every event, raising nothing
        kept = client.responses.retrieve("resp_broken")

    assert upstream.calls_for("plain")[0].path == "/v1/responses"
    assert upstream.calls_for("plain")[0].fault == script.break_stream  # the provider did break it off so
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.failed", kinds
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["One "]  # type: ignore[union-attr]
    numbers = [event.sequence_number for event in events]
    assert numbers == sorted(set(numbers))  # the event added comes next in order
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.id == "resp_broken" and failed.status == "failed" and failed.store is True
    assert failed.error is not None and said in failed.error.message
    assert failed.error.code == ("server_error" if how == "error event" else reason)
    assert kept.status == "failed" and kept.error is not None and kept.error.message == failed.error.message
    record = generation(native_server, raw.headers["x-generation-id"])
    assert (record["status"], record["failure_reason"], record["api_type"]) == ("error", reason, "responses"), record


def test_the_sdks_stream_helper_reads_a_broken_off_stream_to_its_failed_response(
    upstream: FakeUpstream, native_server: str
) -> None:
    """`responses.stream()` checks each event against the response it began with: `response.failed` keeps its id,
    and its output is what was done before the break (nothing here: the message was still being written)."""
    upstream.script("plain", Script(content="One two three four.", break_stream="drop"))
    with (
        openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0) as client,
        client.responses.stream(model="native/plain", input="Hi") as stream,
    ):
        events = list(stream)

    assert events[0].type == "response.created" and events[-1].type == "response.failed"
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.id == events[0].response.id and failed.output == []  # type: ignore[union-attr]


def test_a_stream_the_provider_ends_with_its_own_failed_response_after_an_error_event_ends_once(
    upstream: FakeUpstream, native_server: str
) -> None:
    """OpenAI follows its `error` event with `response.failed`: relayed as it came, with nothing added after it."""
    failure = {"code": "server_error", "message": "out of capacity"}  # its `response.failed`'s, not its `error`'s
    upstream.script("plain", Script(content="One two.", break_stream="error", error_message="the model crashed",
                                    error_event=failure, reply_id="resp_failed"))  # fmt: skip
    with openai.OpenAI(base_url=f"{native_server}/v1", api_key="k", max_retries=0) as client:
        events = list(client.responses.create(model="native/plain", input="Hi", stream=True))
        kept = client.responses.retrieve("resp_failed")

    kinds = [event.type for event in events]
    assert kinds[-2:] == ["error", "response.failed"] and kinds.count("response.failed") == 1, kinds
    assert events[-1].response.error.message == "out of capacity"  # type: ignore[union-attr]  # the provider's own
    assert kept.status == "failed" and kept.error is not None and kept.error.message == "out of capacity"
