"""A response written in fewer writes: what one event-loop callback writes leaves as one write.

uvicorn writes a response's status line and headers as soon as the app sends them, and its body
in a second write. On loopback and in virtual machines each write that wakes the client costs a
wake-up (measured here: ~1.5 ms at one request at a time), so a small answer paid for two. Writes
made in one pass of the event loop now go out as one: nothing waits longer than the callback that
made it, and a stream's chunks still leave as they come. A response's last write leaves as soon as
the response is complete, before whatever the app does next (the request's record is closed then).
A response's head (status line and headers) waits one pass more: a fusion stream's head leaves with
its opening line while the run's first upstream requests are being made, and a write that wakes the
client can cost the server its CPU for as long as the client takes to read (~0.2 ms measured here, at
one request at a time); the requests the answer waits for go out first (see `CoalescedWrites`).
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescedWrites:
    """A transport whose writes within one event-loop callback reach the socket as one write.

    They leave two passes of the loop later, and a response's head three: after the upstream requests the same
    step set going. A write that wakes the client can cost the writer its CPU while the client reads, so what the
    answer waits for goes first. A fusion stream's body is written by the task that drives the run: it writes a
    progress line (the judge starting), then makes the call in the same step, and aiohttp writes the request from
    a task of its own, one pass later. A stream's first step writes the head, then makes the panel calls' tasks,
    which make their request writers in the pass after.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            loop = self._loop
            if data.startswith(b"HTTP/"):  # a response's head: after what its step made ready, and their writers
                loop.call_soon(loop.call_soon, loop.call_soon, self.flush)
            else:
                loop.call_soon(loop.call_soon, self.flush)
        self._pending.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Hand what is pending to the socket now."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    # The rest of the transport's interface is the real transport's. Forwarded method by method, not by a
    # `__getattr__`: a class with one pays for it on every attribute it reads of itself, ~10 per streamed chunk.
    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()
