"""A server-sent-events decoder over raw bytes: the `data` of each event, as bytes, ready for orjson.

Per the SSE spec: lines end in CRLF, LF or CR; `data:` lines of one event join with LF; a blank line
ends the event; comments (`:`), `event:`, `id:` and `retry:` carry nothing a chat stream needs. Working
on bytes skips a decode and re-encode per token, the hottest loop of a streamed answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from openfusion.upstream.limits import ProgressClock


async def sse_data(blocks: AsyncIterator[bytes], *, clock: ProgressClock | None = None) -> AsyncIterator[bytes]:
    """Each event's data, from bytes split anywhere (mid-line, mid-CRLF, mid-character).

    With a `clock`, a block that completes an event is progress; one that does not (comments, blank
    lines, part of an event) is filler, and raises Stalled once filler alone has come for its limit.
    """
    pending: list[bytes] = []  # the unfinished last line, in the blocks it came in
    data: list[bytes] = []
    async for block in blocks:
        # (`find`, not `in`: CPython's `in` on bytes first tries the needle as an int, and builds an error doing so.)
        if block.find(b"\n") < 0 and block.find(b"\r") < 0 and not (pending and pending[-1].endswith(b"\r")):
            # No line ends in this block: the line goes on. Its pieces are joined once, when it ends: joining them
            # at every block made a long line (a multi-MB image as a data URL, in 16 KiB reads) quadratic.
            pending.append(block)
            if clock is not None:
                clock.filler()
            continue
        produced = False
        buffer = b"".join((*pending, block)) if pending else block
        lines = buffer.splitlines(keepends=True)
        # A last line without its end may continue in the next block; a lone CR may be half a CRLF.
        if lines and (not lines[-1].endswith((b"\n", b"\r")) or lines[-1].endswith(b"\r")):
            pending = [lines.pop()]
        else:
            pending = []
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            if not line:
                if data:
                    produced = True
                    yield b"\n".join(data)
                    data = []
            elif line.startswith(b"data:"):
                data.append(line[6:] if line.startswith(b"data: ") else line[5:])  # one space after the colon goes
        if clock is not None:
            if produced:
                clock.moved = True
            else:
                clock.filler()
    tail = b"".join(pending).rstrip(b"\r\n")
    if tail.startswith(b"data:"):
        value = tail[5:]
        data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        yield b"\n".join(data)
