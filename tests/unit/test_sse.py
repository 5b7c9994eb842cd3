"""SSE helpers for the surfaces that name their events: line reassembly and encoding."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from openfusion.sse import DataLines, dumps, encode, encode_named


def test_data_lines_wait_for_a_line_a_chunk_cuts() -> None:
    data = DataLines()
    assert data.feed(b'event: x\ndata: {"a"') == []
    assert data.feed(b": 1}\n\n: comment\ndata: [DO") == [b'data: {"a": 1}']
    assert data.feed(b"NE]\n\n") == [b"data: [DONE]"]


def test_a_line_of_megabytes_in_small_chunks_is_one_line() -> None:
    """A multi-MB line (an image as a data URL) in 4 KiB chunks: nothing until it ends, then the whole line."""
    line = b'data: {"url": "data:image/png;base64,' + b"QUJD" * (1 << 19) + b'"}'
    data = DataLines()
    stream = line + b"\n\ndata: [DONE]\n\n"
    out = [data.feed(stream[i : i + 4096]) for i in range(0, len(stream), 4096)]
    assert [lines for lines in out if lines] == [[line, b"data: [DONE]"]]


@given(
    stream=st.lists(st.sampled_from([b"data: {}", b"event: x", b"data: [DONE]", b"", b": c", b"data: \xc3\xa9"])).map(
        lambda lines: b"\n".join(lines)
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12),
)
def test_data_lines_are_the_same_however_the_stream_is_cut(stream: bytes, cuts: list[int]) -> None:
    whole = DataLines().feed(stream)
    data, lines, start = DataLines(), [], 0
    for end in [*sorted({min(cut, len(stream)) for cut in cuts}), len(stream)]:
        lines += data.feed(stream[start:end])
        start = end
    assert lines == whole


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
