"""A stream's progress clock: filler (comments, blank lines, whitespace) cannot keep a stream alive.

httpx's read timeout is per read, so an upstream that sends a space a second, or nothing but SSE
comments, never trips it. Here a stream that sends only filler for longer than its limit is cut.
Progress costs one attribute write; the clock is read only when filler arrives, so no timer runs
and the relay of real tokens pays nothing measurable. Silence with no bytes at all is still the
read timeout's business.
"""

from __future__ import annotations

import time

from openfusion.errors import UpstreamTimeout
from openfusion.upstream.providers import Route

# The first byte of every filler read: an SSE comment, a blank line, keep-alive whitespace (as ints: `chunk[0]`).
_FILLER_START = frozenset(b": \r\n\t")


class Stalled(Exception):
    """Filler alone (comments, blank lines, whitespace) came for longer than the stream's limit."""


class ProgressClock:
    """Whether a stream moved since its last filler, and since when filler alone has been coming."""

    __slots__ = ("filler_since", "limit_s", "moved")

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.moved = True  # set on every real read or event (the hot path: a plain attribute write)
        self.filler_since = 0.0

    def filler(self) -> None:
        """Bytes that prove nothing came: raise Stalled once filler alone has come for the limit."""
        now = time.monotonic()
        if self.moved:
            self.moved, self.filler_since = False, now
        elif now - self.filler_since > self.limit_s:
            raise Stalled(f"nothing but filler for {self.limit_s:g} s")

    def read(self, chunk: bytes) -> None:
        """A relayed read: filler when it starts with filler and holds no SSE data field; progress otherwise."""
        # Per relayed read, so `find` rather than `in`: CPython's `in` on bytes first tries the needle as an int,
        # and builds (then drops) an error doing so.
        if (not chunk or chunk[0] in _FILLER_START) and chunk.find(b"data:") < 0:
            self.filler()
        else:
            self.moved = True


def stalled(route: Route, limit_s: float) -> UpstreamTimeout:
    """The error of a stream cut for sending nothing but filler."""
    return UpstreamTimeout(
        f"{route.slug} ({route.provider.name}) sent nothing but keep-alives for {limit_s:g} s "
        "(http.call_timeout_s) during the stream",
        model=route.slug,
        provider=route.provider.name,
    )
