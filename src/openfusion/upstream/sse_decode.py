"""A server-sent-events decoder over raw bytes: the `data` of each event, as bytes, ready for orjson.

Per the SSE spec: lines end in CRLF, LF or CR; `data:` lines of one event join with LF; a blank line
ends the event; comments (`:`), `event:`, `id:` and `retry:` carry nothing a chat stream needs. Working
on bytes skips a decode and re-encode per token, the hottest loop of a streamed answer.

`SSEDecoder` is fed read by read by its caller's own loop: a relayed token then crosses no async generator of
the decoder's (each such level costs a resumption, an awaitable and a StopIteration per read); `sse_data` is the
same decoding as an async iterator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from openfusion.upstream.limits import ProgressClock

_NONE: list[bytes] = []  # what a read that completes no event gives (never appended to)


class SSEDecoder:
    """Each event's data, from bytes split anywhere (mid-line, mid-CRLF, mid-character).

    With a `clock`, a read that completes an event is progress; one that does not (comments, blank
    lines, part of an event) is filler, and raises Stalled once filler alone has come for its limit.
    """

    __slots__ = ("_clock", "_data", "_pending")

    def __init__(self, *, clock: ProgressClock | None = None) -> None:
        self._clock = clock
        self._pending: list[bytes] = []  # the unfinished last line, in the blocks it came in
        self._data: list[bytes] = []

    def feed(self, block: bytes) -> list[bytes]:
        """The data of the events this read completes, in order (often none, rarely more than one)."""
        pending, clock = self._pending, self._clock
        # (`find`, not `in`: CPython's `in` on bytes first tries the needle as an int, and builds an error doing so.)
        if block.find(b"\n") < 0 and block.find(b"\r") < 0 and not (pending and pending[-1].endswith(b"\r")):
            # No line ends in this block: the line goes on. Its pieces are joined once, when it ends: joining them
            # at every block made a long line (a multi-MB image as a data URL, in 16 KiB reads) quadratic.
            pending.append(block)
            if clock is not None:
                clock.filler()
            return _NONE
        buffer = b"".join((*pending, block)) if pending else block
        lines = buffer.splitlines(keepends=True)
        # A last line without its end may continue in the next block; a lone CR may be half a CRLF.
        if lines and (not lines[-1].endswith((b"\n", b"\r")) or lines[-1].endswith(b"\r")):
            self._pending = [lines.pop()]
        elif pending:
            self._pending = []
        events = _NONE
        data = self._data
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            if not line:
                if data:
                    if events is _NONE:
                        events = []
                    events.append(b"\n".join(data))
                    data = self._data = []
            elif line.startswith(b"data:"):
                data.append(line[6:] if line.startswith(b"data: ") else line[5:])  # one space after the colon goes
        if clock is not None:
            if events:
                clock.moved = True
            else:
                clock.filler()
        return events

    def end(self) -> list[bytes]:
        """The data of an event the stream's end completes (a last event without its blank line)."""
        tail = b"".join(self._pending).rstrip(b"\r\n")
        self._pending = []
        data, self._data = self._data, []
        if tail.startswith(b"data:"):
            value = tail[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        return [b"\n".join(data)] if data else _NONE


async def sse_data(blocks: AsyncIterator[bytes], *, clock: ProgressClock | None = None) -> AsyncIterator[bytes]:
    """Each event's data, from bytes split anywhere (see `SSEDecoder`)."""
    decoder = SSEDecoder(clock=clock)
    async for block in blocks:
        for data in decoder.feed(block):
            yield data
    for data in decoder.end():
        yield data
