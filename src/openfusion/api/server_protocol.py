"""The HTTP server's connection protocol: uvicorn's httptools protocol, with each tick's writes coalesced.

uvicorn writes a response's status line and headers as soon as the app sends them, and its body
in a second write. On loopback and in virtual machines each write that wakes the client costs a
wake-up (measured here: ~1.5 ms at one request at a time), so a small answer paid for two. Writes
made in one pass of the event loop now go out as one: nothing waits longer than the callback that
made it, and a stream's chunks still leave as they come.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescedWrites:
    """A transport whose writes within one event-loop callback reach the socket as one write."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
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

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


def http_protocol() -> type[asyncio.Protocol] | str:
    """The protocol class for `uvicorn.run(http=...)`; uvicorn's own choice where httptools is missing."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn falls back to h11 itself
        return "auto"

    class HttpProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(CoalescedWrites(transport, self.loop))  # type: ignore[arg-type]

    return HttpProtocol
