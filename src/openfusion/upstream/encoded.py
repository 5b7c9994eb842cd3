"""A request body's bytes, and a part of it serialized ahead of time to be shared by several requests.

A panel sends the same conversation to every panelist, and the conversation is most of each request: an agent's
150 KB costs ~0.1 ms to serialize. `EncodedJSON` holds it serialized once; `request_bytes` puts those bytes in each
body as they are (orjson's own `Fragment` would copy them byte by byte, at about a third of a serialization's cost).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

# orjson's result holds a ~16 KiB allocation however short: below this length a copy of the exact size is kept.
_COPIED_BELOW = 64 * 1024


class EncodedJSON:
    """A request's `messages` already serialized: its `parts`, whose concatenation the request will carry.

    The bytes are copied once, into the request's body (`request_bytes`): not into a whole of their own first. Under
    callgrind a copy of an agent's 150 KB counts ~0.17 M instructions, a third of its serialization.
    """

    __slots__ = ("parts",)

    def __init__(self, value: Any) -> None:
        # A copy of the exact size: orjson's own result holds ~16 KiB however short.
        self.parts: tuple[bytes | memoryview, ...] = (bytes(memoryview(orjson.dumps(value))),)

    @classmethod
    def of_list(cls, head: list[Any], rest: bytes) -> EncodedJSON:
        """The JSON array of `head`'s values, then of the values of `rest`, a JSON array serialized already
        (`encoded_list`): its bytes are not copied here."""
        encoded = cls.__new__(cls)
        first = orjson.dumps(head)
        if rest == b"[]":
            encoded.parts = (first,)
        elif not head:
            encoded.parts = (rest,)
        else:
            encoded.parts = (memoryview(first)[:-1], b",", memoryview(rest)[1:])
        return encoded


def encoded_list(values: list[Any]) -> bytes:
    """`values` serialized as a JSON array, to follow other values in one (`EncodedJSON.of_list`). A long one is
    orjson's own result, not copied for the copy's cost (~0.17 M instructions for an agent's 150 KB): its spare
    capacity is not small (254 KiB held for an agent's 148 KiB, traced), but it is held only while the judge is
    awaited. A short one is a copy of its size, as orjson's result holds ~16 KiB however short."""
    data = orjson.dumps(values)
    return data if len(data) >= _COPIED_BELOW else bytes(memoryview(data))


def request_bytes(payload: Mapping[str, Any]) -> bytes:
    """`payload` as JSON; `messages` given as `EncodedJSON` goes in as its bytes (last)."""
    messages = payload.get("messages")
    if type(messages) is not EncodedJSON:
        # orjson's result holds a ~16 KiB allocation whatever its length: a copy of the exact size is sent
        # (under respx and httpx's own transports the response keeps its request, body and all).
        return bytes(memoryview(orjson.dumps(payload)))
    head = orjson.dumps({key: value for key, value in payload.items() if key != "messages"})
    key = b',"messages":' if len(head) > 2 else b'"messages":'
    return b"".join((memoryview(head)[:-1], key, *messages.parts, b"}"))
