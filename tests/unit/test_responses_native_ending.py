"""Where the event openfusion adds to a native Responses stream the provider broke off goes, which events it takes
as unreadable, and which error a provider's own `error` event gives the failed response."""

from __future__ import annotations

from typing import Any

import pytest

from openfusion.api.responses.native import _event_start, _malformed, _said_error, _separator

DELTA = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hi"}\n\n'


@pytest.mark.parametrize(
    ("relayed", "separator"),
    [
        (b"", b""),  # nothing relayed
        (DELTA, b""),  # a whole event
        (DELTA.replace(b"\n", b"\r\n"), b""),
        (DELTA + b"event: response.output_text.delta\n", b""),  # its `event:` line alone: the added one's replaces it
        (DELTA[:-1], b"\n"),  # its data whole, its blank line not come: ended, as it came
        (DELTA[:-8], b"\n\n"),  # a line cut: ended (what came of it no strict client reads)
    ],
)
def test_an_added_event_ends_what_the_provider_left_unfinished_and_no_more(relayed: bytes, separator: bytes) -> None:
    assert _separator(relayed) == separator


def test_an_unreadable_event_is_cut_from_its_first_line() -> None:
    bad = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":\n\n'
    line = bad.split(b"\n")[1]

    assert _event_start(DELTA + bad, line) == len(DELTA)
    assert _event_start(bad, line) == 0
    assert _event_start(DELTA.replace(b"\n", b"\r\n") + bad, line) == len(DELTA) + len(DELTA.split(b"\n")) - 1


@pytest.mark.parametrize(
    ("line", "malformed"),
    [
        (b'data: {"type":"response.output_text.delta","delta":', True),
        (b"data: <html>Bad gateway</html>", True),
        (b"data: ", True),
        (b'data: {"type":"response.completed"} ', False),  # whitespace after it
        (b'data: {"type":"response.completed"}\r', False),
        (b"data: [DONE]", False),  # a compatible server's end: relayed
    ],
)
def test_an_event_that_is_not_a_json_object_is_malformed(line: bytes, malformed: bool) -> None:
    assert _malformed(line) is malformed


@pytest.mark.parametrize(
    ("event", "code", "message"),
    [
        ({"type": "error", "code": "rate_limit_exceeded", "message": "slow down", "param": None}, "rate_limit_exceeded",
         "slow down"),  # the API's own shape
        ({"type": "error", "error": {"code": "server_error", "message": "crashed"}}, "server_error", "crashed"),
        ({"type": "error", "code": 500}, "server_error", "The provider failed mid-stream."),  # nothing usable in it
    ],
)  # fmt: skip
def test_a_providers_error_event_is_the_error_its_failed_response_gives(
    event: dict[str, Any], code: str, message: str
) -> None:
    error = _said_error(event)

    assert (error.code, error.message) == (code, message)
