"""A request body's bytes, and a part of it serialized ahead of time to be shared by several requests.

A panel sends the same conversation to every panelist, and the conversation is most of each request: an agent's
150 KB costs ~0.1 ms to serialize. `EncodedJSON` holds it serialized once; `request_bytes` puts those bytes in each
body as they are (orjson's own `Fragment` would copy them byte by byte, at about a third of a serialization's cost).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson


class EncodedJSON:
    """A request's `messages` already serialized: its `data`, exactly as the request will carry it."""

    __slots__ = ("data",)

    def __init__(self, value: Any) -> None:
        # A copy of the exact size: orjson's own result holds ~16 KiB however short.
        self.data = bytes(memoryview(orjson.dumps(value)))


def request_bytes(payload: Mapping[str, Any]) -> bytes:
    """`payload` as JSON; `messages` given as `EncodedJSON` goes in as its bytes (last)."""
    messages = payload.get("messages")
    if type(messages) is not EncodedJSON:
        # orjson's result holds a ~16 KiB allocation whatever its length: a copy of the exact size is sent
        # (under respx and httpx's own transports the response keeps its request, body and all).
        return bytes(memoryview(orjson.dumps(payload)))
    head = orjson.dumps({key: value for key, value in payload.items() if key != "messages"})
    return b"".join((head[:-1], b',"messages":' if len(head) > 2 else b'"messages":', messages.data, b"}"))
