"""SSE helpers for the surfaces that name their events: line reassembly and encoding."""

from __future__ import annotations

from openfusion.sse import DataLines, encode_named


def test_data_lines_wait_for_a_line_a_chunk_cuts() -> None:
    data = DataLines()
    assert data.feed(b'event: x\ndata: {"a"') == []
    assert data.feed(b": 1}\n\n: comment\ndata: [DO") == [b'data: {"a": 1}']
    assert data.feed(b"NE]\n\n") == [b"data: [DONE]"]


def test_named_events_carry_their_type_as_the_event_line() -> None:
    assert encode_named([{"type": "ping"}, {"type": "message_stop"}]) == (
        b'event: ping\ndata: {"type":"ping"}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
