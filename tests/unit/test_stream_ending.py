"""Whether a relayed pass-through stream that ended cleanly was a whole answer, judged from its last bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from openfusion.api.passthrough import unfinished
from openfusion.errors import UpstreamProtocolError, UpstreamStatusError
from openfusion.upstream.client import Forwarded


async def _nothing() -> AsyncIterator[bytes]:
    yield b""


def _forwarded(content_type: str = "text/event-stream; charset=utf-8") -> Forwarded:
    return Forwarded(200, {"content-type": content_type}, _nothing(), None)


def _event(choices: list[dict[str, object]], **extra: object) -> bytes:
    return (
        b"data: " + orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "choices": choices, **extra}) + b"\n\n"
    )


CONTENT = _event([{"index": 0, "delta": {"content": 'say "finish_reason": "stop"'}, "finish_reason": None}])
FINISH = _event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
USAGE = _event([], usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})


@pytest.mark.parametrize(
    "tail",
    [
        CONTENT + FINISH + USAGE + b"data: [DONE]\n\n",
        CONTENT + FINISH + USAGE,  # no [DONE]: the finish_reason says it is whole
        CONTENT + b"data:[DONE]\r\n\r\n",  # [DONE] alone, CRLF and no space
        b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}\n\n: keep-alive\n\n',
        b'{"id": "c1", "choices": [{"finish_reason": null}]}\n\ndata: [DONE]\n\n',  # the window cut an event
    ],
    ids=["done", "finish-then-usage", "crlf", "spaced-json-and-comment", "cut-window"],
)
def test_a_whole_stream_passes(tail: bytes) -> None:
    assert unfinished(_forwarded(), tail) is None


@pytest.mark.parametrize("tail", [b"", CONTENT, CONTENT + CONTENT, b": comment only\n\n", CONTENT[:-20]], ids=str)
def test_a_stream_without_an_end_is_an_invalid_response(tail: bytes) -> None:
    ending = unfinished(_forwarded(), tail)
    assert ending is not None
    error, done_sent = ending
    assert isinstance(error, UpstreamProtocolError) and error.code == "upstream_invalid_response"
    assert not done_sent


def test_an_error_event_fails_the_stream_even_after_done() -> None:
    error_event = _event([], error={"message": "overloaded", "code": 502})
    for tail, done in ((CONTENT + error_event, False), (CONTENT + error_event + b"data: [DONE]\n\n", True)):
        ending = unfinished(_forwarded(), tail)
        assert ending is not None
        error, done_sent = ending
        assert isinstance(error, UpstreamStatusError) and "overloaded" in error.message
        assert error.upstream_status == 502 and done_sent is done


def test_a_body_that_is_not_an_event_stream_is_not_judged() -> None:
    assert unfinished(_forwarded("application/json"), b'{"choices": []}') is None
