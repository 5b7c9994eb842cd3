"""A server-sent-events decoder over raw bytes: the `data` of each event, as bytes, ready for orjson.

Per the SSE spec: lines end in CRLF, LF or CR; `data:` lines of one event join with LF; a blank line
ends the event; comments (`:`), `event:`, `id:` and `retry:` carry nothing a chat stream needs. Working
on bytes skips a decode and re-encode per token, the hottest loop of a streamed answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from openfusion.upstream.limits import ProgressClock

_SHORT = 16 * 1024  # the most of an unfinished event the LF-only way re-reads with each block


async def sse_data(blocks: AsyncIterator[bytes], *, clock: ProgressClock | None = None) -> AsyncIterator[bytes]:
    """Each event's data, from bytes split anywhere (mid-line, mid-CRLF, mid-character).

    With a `clock`, a block that completes an event is progress; one that does not (comments, blank
    lines, part of an event) is filler, and raises Stalled once filler alone has come for its limit.
    """
    pending = b""
    data: list[bytes] = []
    async for block in blocks:
        produced = False
        buffer = pending + block if pending else block
        if not data and len(pending) < _SHORT and b"\r" not in buffer:
            # Lines ending in LF alone, as most providers send them, and no event half read: cut at the blank lines
            # and keep what follows the last one, whole lines included, for the next block (an event longer than
            # _SHORT goes the general way, which keeps only its last, unfinished line to join with the next block).
            *events, pending = buffer.split(b"\n\n")
            for event in events:
                if event.startswith(b"data:") and b"\n" not in event:  # the usual event: one data line
                    produced = True
                    yield event[6:] if event.startswith(b"data: ") else event[5:]
                    continue
                fields = [line[6:] if line.startswith(b"data: ") else line[5:] for line in event.split(b"\n")
                          if line.startswith(b"data:")]  # fmt: skip
                if fields:
                    produced = True
                    yield b"\n".join(fields)
            if clock is not None:
                if produced:
                    clock.moved = True
                else:
                    clock.filler()
            continue
        lines = buffer.splitlines(keepends=True)
        # A last line without its end may continue in the next block; a lone CR may be half a CRLF.
        if lines and (not lines[-1].endswith((b"\n", b"\r")) or lines[-1].endswith(b"\r")):
            pending = lines.pop()
        else:
            pending = b""
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
    for line in pending.splitlines():  # the last event, without its blank line: whole lines, and maybe part of one
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        yield b"\n".join(data)
