"""SSE helpers for the surfaces that name their events: encoding."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from openfusion.sse import dumps, encode, encode_named


def test_named_events_carry_their_type_as_the_event_line() -> None:
    assert encode_named([{"type": "ping"}, {"type": "message_stop"}]) == (
        b'event: ping\ndata: {"type":"ping"}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
    )


_BREAKS = "\x85\u2028\u2029"


# Any text JSON can carry: no lone surrogate (no upstream answer holds one: orjson refuses it on the way in).
_TEXT = st.sampled_from(["a", "é", "\u201c", "\u00a0", "€", "\n", *_BREAKS]) | st.characters(exclude_categories=("Cs",))


@given(text=st.text(alphabet=_TEXT))
def test_a_data_line_escapes_what_splitlines_would_split_and_means_the_same(text: str) -> None:
    payload = {"type": "x", "delta": text, _BREAKS: [text]}
    for line in (dumps(payload), encode(payload), encode_named([payload])):
        assert all(piece.splitlines() in ([piece], []) for piece in line.decode().split("\n"))  # only LF ends a line
    assert orjson.loads(dumps(payload)) == payload
    assert not any(char in dumps(payload).decode() for char in _BREAKS)
    assert encode(payload) == b"data: " + dumps(payload) + b"\n\n"
