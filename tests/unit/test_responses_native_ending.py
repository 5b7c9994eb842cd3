"""Which events a native Responses relay takes as unreadable, and which error a provider's own `error` event gives the
failed response."""

from __future__ import annotations

from typing import Any

import pytest

from openfusion.api.responses.native import _malformed, _said_error


@pytest.mark.parametrize(
    ("data", "malformed"),
    [
        (b'{"type":"response.output_text.delta","delta":', True),
        (b"<html>Bad gateway</html>", True),
        (b"", True),
        (b'["not", "an object"]', True),
        (b'{"type":"response.completed"} ', False),  # whitespace after it
        (b'{"type":"response.completed",\n"sequence_number":3}', False),  # on two `data:` lines
        (b"[DONE]", False),  # a compatible server's end: relayed
    ],
)
def test_an_event_whose_data_is_not_a_json_object_is_malformed(data: bytes, malformed: bool) -> None:
    assert _malformed(data) is malformed


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
