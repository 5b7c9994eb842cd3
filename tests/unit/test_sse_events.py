"""An event stream cut into whole events, however its reads fall, and the data of each event as SSE clients read it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from openfusion.sse_events import WholeEvents, event_data, events_before, events_end, split_events

DELTA = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hi"}\n\n'
DONE = b"data: [DONE]\n\n"


def cut(stream: bytes, cuts: list[int]) -> tuple[list[bytes], bytes]:
    """What a relay passes on of `stream` read in pieces cut at `cuts` (the usual read as it is, as the relays do),
    and what waits at its end."""
    events, out, start = WholeEvents(), [], 0
    for end in [*sorted({min(at, len(stream)) for at in cuts}), len(stream)]:
        chunk = stream[start:end]
        start = end
        if events.waiting or chunk[-2:] != b"\n\n":
            chunk = events.cut(chunk)
        if chunk:
            out.append(chunk)
    return out, events.rest()


def test_a_read_that_ends_inside_an_event_passes_on_the_events_before_it_and_the_rest_waits() -> None:
    events = WholeEvents()

    assert events.cut(DELTA + DELTA[:30]) == DELTA
    assert events.cut(DELTA[30:50]) == b""  # still unfinished
    assert events.cut(DELTA[50:] + DONE[:4]) == DELTA  # completed, in one piece
    assert events.waiting == [DONE[:4]]
    assert events.cut(DONE[4:]) == DONE and not events.waiting


def test_a_read_that_ends_an_event_is_passed_on_as_it_is() -> None:
    chunk = DELTA + DELTA
    assert WholeEvents().cut(chunk) is chunk  # no copy


def test_every_line_end_ends_an_event_even_one_split_between_reads() -> None:
    for blank in (b"\n", b"\r\n", b"\r"):
        event = DELTA.replace(b"\n", blank)
        assert events_end(event + b"data: {") == len(event)
        out, rest = cut(event + event, [len(event) - 1])  # its blank line's last byte in the next read
        assert out == [event + event] and rest == b""


def test_an_event_of_megabytes_in_small_reads_comes_whole_once_it_ends() -> None:
    """A multi-MB event (an image as a data URL) in 4 KiB reads: nothing until it ends, then the whole event."""
    event = b'data: {"url": "data:image/png;base64,' + b"QUJD" * (1 << 19) + b'"}\n\n'
    stream = event + DONE
    out, rest = cut(stream, list(range(4096, len(stream), 4096)))
    assert b"".join(out) == stream and len(out[0]) >= len(event) and rest == b""  # nothing before the event ends


# Events of every kind a stream may hold: named, [DONE], a comment, data on two lines, CRLF and CR line ends.
_PIECES = [DELTA, DONE, b": keep-alive\n\n", b'data: {"a":\ndata: 1}\n\n', DELTA.replace(b"\n", b"\r\n"),
           b"data:{}\r\r"]  # fmt: skip


@given(
    stream=st.lists(st.sampled_from(_PIECES), max_size=6).map(b"".join),
    tail=st.sampled_from([b"", b"data: {", b"event: x\n", b"data: {}\n"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_whole_events_only_however_the_stream_is_cut(stream: bytes, tail: bytes, cuts: list[int]) -> None:
    """Each piece passed on ends where an event ends; together they are the stream's whole events, as they came, and
    read as the same events; what the stream left unfinished is what waits at its end."""
    out, rest = cut(stream + tail, cuts)

    assert all(piece and events_end(piece) == len(piece) for piece in out)
    assert b"".join(out) == stream and rest == tail
    assert [data for piece in out for data in event_data(piece)] == event_data(stream)


def test_the_data_of_an_event_is_its_data_lines_joined_as_sse_joins_them() -> None:
    stream = (
        b'event: x\ndata: {"a":\ndata:  1}\n\n'  # two lines: joined by a line feed (one space after the colon dropped)
        b": a comment\n\n"  # no data: no event for a client
        b"data:[DONE]\r\n\r\n"  # no space, CRLF
        b"id: 7\ndata: \n\n"  # empty data: an event all the same
    )
    assert event_data(stream) == [b'{"a":\n 1}', b"[DONE]", b""]


def test_the_events_before_one_are_cut_at_its_start() -> None:
    comment = b": keep-alive\n\n"
    stream = DELTA + comment + b"data: <html>\n\n" + DONE

    assert split_events(stream) == [DELTA, comment, b"data: <html>\n\n", DONE]
    assert events_before(stream, 1) == DELTA + comment  # the second event with data
    assert events_before(stream, 0) == b""
