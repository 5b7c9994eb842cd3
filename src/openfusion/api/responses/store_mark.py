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
from openfusion.sse_events import event_data, split_events

# In every event that carries the response (its key; the object's `"object": "response"` too), and in almost no other:
# a quote inside a JSON string is escaped, so a text delta that says it has no such bytes. A cheap test, per read.
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


def marked_events(events: bytes) -> bytes:
    """Whole events (`sse_events.WholeEvents`), each that carries the response marked stored; the rest as they came."""
    if events.find(_RESPONSE) < 0:
        return events
    return b"".join([_marked(event) for event in split_events(events)])


def _marked(event: bytes) -> bytes:
    """The event, its response marked stored: its data on one line where its `data:` lines began (the other lines, and
    every line's end, as they came)."""
    if event.find(_RESPONSE) < 0 or not (data := event_data(event)):
        return event
    try:
        parsed = orjson.loads(data[0])
    except orjson.JSONDecodeError:
        return event  # relayed as it came: the relay's own reading says what is wrong with it
    response = parsed.get("response") if isinstance(parsed, dict) else None
    if not isinstance(response, dict) or not keepable(response) or not mark_stored(response):
        return event
    lines = event.splitlines(keepends=True)
    first = next(at for at, line in enumerate(lines) if line.startswith(b"data:"))
    line_end = lines[first][len(lines[first].rstrip(b"\r\n")) :]
    kept = [line for line in lines if not line.startswith(b"data:")]
    kept.insert(first, b"data: " + dumps(parsed) + line_end)
    return b"".join(kept)
