"""The `store` a relayed response says, when openfusion keeps it: `true`, whatever the provider was asked.

A native pass-through asks the provider to keep nothing (`store: false`, unless the operator lets it keep responses),
and the provider's response object says so; openfusion keeps the response itself and serves `previous_response_id`
and `GET /v1/responses/{id}` from its copy. So the object the client gets (the whole answer, or each stream event
that carries it: `response.created`, `response.in_progress`, `response.completed`, …) and the copy kept say
`store: true`, as the client asked (its default).
"""

from __future__ import annotations

from typing import Any

import orjson

from openfusion.sse import dumps

# In every event that carries the response (its key; the object's `"object": "response"` too), and in almost no other:
# a quote inside a JSON string is escaped, so a text delta that says it has no such bytes. A cheap test, per chunk.
_RESPONSE = b'"response"'


def keepable(response: dict[str, Any]) -> bool:
    """Whether openfusion can keep it: a response has an id (a 200 may carry an error object, or a compatible server's
    response none), which a follow-up names."""
    return isinstance(response.get("id"), str)


def mark_stored(response: dict[str, Any]) -> bool:
    """Set the response's `store` to true; whether it said otherwise."""
    if response.get("store") is True:
        return False
    response["store"] = True
    return True


class StoredMarks:
    """A relayed event stream, chunk by chunk, as whole lines: each event that carries the response marked stored.

    A line a chunk cuts waits for the rest (its event is read whole); `rest()` is what the stream left unended.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: list[bytes] = []

    def feed(self, chunk: bytes) -> bytes:
        """The lines this chunk ends (after what earlier chunks left), the response events among them marked."""
        end = chunk.rfind(b"\n") + 1
        if not end:
            self._pending.append(chunk)
            return b""
        lines = b"".join((*self._pending, chunk[:end])) if self._pending else chunk[:end]
        self._pending = [chunk[end:]] if end < len(chunk) else []
        if lines.find(_RESPONSE) < 0:
            return lines
        return b"\n".join([_marked(line) for line in lines.split(b"\n")])

    def rest(self) -> bytes:
        """What the stream left after its last line end."""
        rest, self._pending = b"".join(self._pending), []
        return rest


def _marked(line: bytes) -> bytes:
    if not line.startswith(b"data:") or line.find(_RESPONSE) < 0:
        return line
    try:
        event = orjson.loads(line[5:])
    except orjson.JSONDecodeError:
        return line  # relayed as it came: the relay's own reading says what is wrong with it
    response = event.get("response") if isinstance(event, dict) else None
    if not isinstance(response, dict) or not keepable(response) or not mark_stored(response):
        return line
    return b"data: " + dumps(event) + (b"\r" if line.endswith(b"\r") else b"")
