"""A fetched body's Content-Encoding undone with a bound on what it may inflate to, whatever the page sent.

httpx decodes each chunk it reads in full: 12 KB of zeros gzipped twice (`Content-Encoding: gzip, gzip`)
become 1 GiB in one call, before any byte cap is looked at. So the fetcher reads the raw bytes and
decodes them here, asking zlib for no more than the bytes still wanted. One coding (gzip or deflate, the
ones it asks for) is undone; a stack of them, or one it never asked for, is refused.
"""

from __future__ import annotations

import re
import zlib

from openfusion.upstream.web.errors import FetchFailed

# What the fetcher's Accept-Encoding offers; nothing else is decoded.
ACCEPT_ENCODING = "gzip, deflate"
_GZIP = 16 + zlib.MAX_WBITS
_ZLIB = zlib.MAX_WBITS
_RAW_DEFLATE = -zlib.MAX_WBITS
_WBITS = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": _ZLIB}
_CODING = re.compile(r"^[a-z0-9._+-]{1,32}$")


class BoundedDecoder:
    """Decodes a body chunk by chunk, never producing more than the `room` each call is given."""

    def __init__(self, content_encoding: str | None) -> None:
        """`content_encoding`: the response's header; FetchFailed when it is not one coding offered."""
        codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if len(codings) > 1 or (codings and codings[0] not in _WBITS):
            # Quoted only when it reads as codings: the header is the page's text, and this message is not
            # inside the block that marks web text untrusted.
            named = f" {', '.join(codings)!r}" if all(_CODING.match(c) for c in codings) else ""
            raise FetchFailed(f"the content encoding{named} is not supported (only one of gzip or deflate).")
        self.coding = codings[0] if codings else None
        self._inflate = zlib.decompressobj(_WBITS[self.coding]) if self.coding else None
        self._started = False

    def decode(self, raw: bytes, room: int) -> tuple[bytes, bool]:
        """The decoded bytes of `raw`, at most `room` of them; True when it would have made more.

        Inflating stops at the input's end having emitted all it can: nothing is left for a flush.
        """
        if self._inflate is None:
            return raw[:room], len(raw) > room
        try:
            # One byte beyond the room tells "exactly full" from "more to come" without inflating the rest.
            decoded = self._inflate.decompress(raw, room + 1)
        except zlib.error:
            if self._started or self.coding != "deflate":
                raise FetchFailed(f"the {self.coding}-encoded body could not be decoded.") from None
            # Servers send "deflate" both with the zlib wrapper (as the RFC says) and without it.
            self._inflate = zlib.decompressobj(_RAW_DEFLATE)
            return self.decode(raw, room)
        self._started = True
        return decoded[:room], len(decoded) > room
