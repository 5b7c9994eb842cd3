"""The SSE decoder: event boundaries, line endings and data fields, however the bytes are split."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

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
