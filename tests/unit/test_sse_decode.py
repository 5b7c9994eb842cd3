"""The SSE decoder: event boundaries, line endings and data fields, however the bytes are split."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openfusion.upstream.limits import ProgressClock, Stalled
from openfusion.upstream.sse_decode import sse_data

STREAM = (
    b": OPENROUTER PROCESSING\r\n\r\n"
    b'data: {"a": 1}\r\n\r\n'
    b"event: message\nid: 7\nretry: 100\n"
    b'data: {"b":\n'
    b"data: 2}\n\n"
    b'data:{"c": "\xc3\xa9"}\r\r'
    b"data: [DONE]\n\n"
)
EXPECTED = [b'{"a": 1}', b'{"b":\n2}', b'{"c": "\xc3\xa9"}', b"[DONE]"]


async def _blocks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 16, 1000])
async def test_events_survive_any_split(size: int) -> None:
    assert [event async for event in sse_data(_blocks(STREAM, size))] == EXPECTED


async def test_a_crlf_split_between_blocks_is_one_line_end() -> None:
    async def blocks() -> AsyncIterator[bytes]:
        yield b'data: {"x": 1}\r'
        yield b"\n\r"
        yield b"\n"

    assert [event async for event in sse_data(blocks())] == [b'{"x": 1}']


async def test_a_last_event_without_a_blank_line_is_still_delivered() -> None:
    async def blocks() -> AsyncIterator[bytes]:
        yield b'data: {"last": true}'

    assert [event async for event in sse_data(blocks())] == [b'{"last": true}']


async def test_comments_and_other_fields_yield_nothing() -> None:
    async def blocks() -> AsyncIterator[bytes]:
        yield b": keep-alive\n\nevent: ping\n\nid: 3\n\n"

    assert [event async for event in sse_data(blocks())] == []


async def test_the_clock_moves_only_for_blocks_that_complete_an_event() -> None:
    clock = ProgressClock(limit_s=60)
    moved: list[bool] = []

    async def blocks() -> AsyncIterator[bytes]:
        for block in (
            b": OPENROUTER PROCESSING\n\n",
            b'data: {"a": 1}\n\n',
            b"\n",
            b'data: {"b"',
            b": 2}\n\n: ping\n\n",
        ):
            yield block
            moved.append(clock.moved)  # as the decoder left it after that block

    assert [event async for event in sse_data(blocks(), clock=clock)] == [b'{"a": 1}', b'{"b": 2}']
    assert moved == [False, True, False, False, True]


async def test_filler_past_the_limit_stalls_the_stream() -> None:
    clock = ProgressClock(limit_s=0.05)

    async def blocks() -> AsyncIterator[bytes]:
        yield b'data: {"a": 1}\n\n'
        while True:
            await asyncio.sleep(0.02)
            yield b": keep-alive\n\n"

    events = []
    with pytest.raises(Stalled):
        async for event in sse_data(blocks(), clock=clock):
            events.append(event)
    assert events == [b'{"a": 1}']


@pytest.mark.parametrize(
    ("read", "progress"),
    [
        (b'data: {"a": 1}\n\n', True),
        (b'\n\ndata: {"a": 1}\n\n', True),  # the end of one event and the next
        (b": keep-alive\n\n", False),
        (b"\n\n", False),
        (b" ", False),
        (b"", False),
        (b"\t\r\n", False),
        (b': ping\n\ndata: {"a": 1}\n\n', True),  # filler first, then an event in the same read
        (b'{"id": "chatcmpl-1"', True),  # a JSON body relayed as it comes
        (b'", "b": 2}\n', True),
    ],
)
def test_a_relayed_read_is_progress_unless_it_is_filler(read: bytes, progress: bool) -> None:
    clock = ProgressClock(limit_s=0)
    clock.filler()  # filler began …
    clock.filler_since -= 1  # … a second ago: more filler now stalls
    if progress:
        clock.read(read)
        assert clock.moved
    else:
        with pytest.raises(Stalled):
            clock.read(read)


def test_filler_alone_is_timed_from_its_first_piece() -> None:
    clock = ProgressClock(limit_s=60)
    clock.filler()
    clock.filler_since -= 59
    clock.filler()  # 59 s of filler: still within the limit
    clock.moved = True  # a real event
    clock.filler()  # filler starts over
    clock.filler_since -= 61
    with pytest.raises(Stalled):
        clock.filler()


# Any field value an event can carry: anything but the line ends.
_VALUE = st.binary(max_size=12).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b""))
_PREFIX = st.sampled_from([b"data: ", b"data:", b": ", b"event: ", b"id: ", b""])  # b"": a blank line
_END = st.sampled_from([b"\n", b"\r\n", b"\r"])


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(st.tuples(_PREFIX, _VALUE, _END), max_size=24),
    tail=st.one_of(st.just(b""), st.tuples(_PREFIX, _VALUE).map(b"".join)),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=16),
)
async def test_any_stream_split_anywhere_gives_what_the_spec_reads_in_it(
    lines: list[tuple[bytes, bytes, bytes]], tail: bytes, cuts: list[int]
) -> None:
    """LF, CRLF and CR line ends mixed, one-line and multi-line events, comments, other fields and blank lines, a
    last line maybe without its end, cut into blocks anywhere: the events `_reference` reads in the whole stream."""
    stream = b"".join(prefix + (value if prefix else b"") + end for prefix, value, end in lines) + tail
    positions = sorted({min(cut, len(stream)) for cut in cuts})

    async def blocks() -> AsyncIterator[bytes]:
        start = 0
        for end in [*positions, len(stream)]:
            yield stream[start:end]
            start = end

    assert [event async for event in sse_data(blocks())] == _reference(stream)


async def test_a_long_event_in_small_blocks_is_read_whole() -> None:
    """An event of many long lines, in blocks shorter than its lines: each line gathered as it completes."""
    lines = [b"data: " + bytes([65 + i % 26]) * 1000 for i in range(60)]
    stream = b"\n".join(lines) + b"\n\ndata: next\n\n"

    assert [event async for event in sse_data(_blocks(stream, 700))] == _reference(stream)
    assert len(_reference(stream)) == 2


async def test_one_line_of_megabytes_in_small_blocks_is_one_event() -> None:
    """A multi-MB event on one line (an image as a data URL), in 4 KiB reads: its pieces are kept as they came and
    joined once, when the line ends (joining them at every read was quadratic: 1.1 s for 8 MiB in 16 KiB reads).
    Until then each read is filler; the read that ends the event is progress."""
    value = b'{"images": [{"image_url": {"url": "data:image/png;base64,' + b"QUJD" * (1 << 19) + b'"}}]}'
    stream = b"data: " + value + b"\n\ndata: [DONE]\n\n"
    clock = ProgressClock(limit_s=60)
    moved: list[bool] = []

    async def blocks() -> AsyncIterator[bytes]:
        async for block in _blocks(stream, 4096):
            yield block
            moved.append(clock.moved)

    assert [event async for event in sse_data(blocks(), clock=clock)] == [value, b"[DONE]"]
    assert moved[-1] and not any(moved[:-2]) and len(moved) > 500


async def test_a_lone_cr_at_a_blocks_end_ends_its_line_once_the_next_block_shows_no_lf() -> None:
    """A CR closing a block may be half a CRLF, so its line waits; a next block without any line end shows that it
    was not, and the blank line it made ends the event then, not at some later block."""
    taken: list[bytes] = []

    async def blocks() -> AsyncIterator[bytes]:
        for block in (b"data: a\r", b"\r", b"data: b", b"\r\r"):
            taken.append(block)
            yield block

    events = sse_data(blocks())
    assert await anext(events) == b"a"
    assert taken == [b"data: a\r", b"\r", b"data: b"]  # "a" ended in the third block, which has no line end
    assert [event async for event in events] == [b"b"]


def _reference(stream: bytes) -> list[bytes]:
    """The events of a whole stream by the spec's rules, as far as a chat stream needs them: lines end in CRLF, CR or
    LF; `data` lines join with LF; a blank line (or the stream's end) ends an event; other lines carry nothing."""
    out, data = [], []
    for line in stream.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        if not line:
            if data:
                out.append(b"\n".join(data))
            data = []
        elif line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        out.append(b"\n".join(data))
    return out
