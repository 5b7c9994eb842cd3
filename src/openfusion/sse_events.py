"""An event stream relayed as whole events: a read that ends inside an event waits for the read that completes it.

A client can do nothing with half an event, so holding it back keeps nothing usable from it; and what a client has then
always ends at an event boundary, where an event openfusion adds (the error that ends a stream the provider broke off,
or the shutdown stopped) follows as it is, with nothing to end first. The relays read each event's data (`event_data`)
for what they watch: the usage, the end, errors, events that are not JSON.
"""

from __future__ import annotations

import re

# The blank line that ends an event, after its last line's end: SSE ends lines with LF, CRLF or CR.
_BLANKS = (b"\n\n", b"\r\n\r\n", b"\r\r")
_BLANK = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def events_end(data: bytes) -> int:
    """Where the last whole event in `data` ends (0: none ends in it)."""
    return max([at + len(blank) for blank in _BLANKS if (at := data.rfind(blank)) >= 0], default=0)


class WholeEvents:
    """A stream's reads cut at their last event boundary: the whole events go on, the rest waits (`waiting`) for the
    read that completes it.

    The usual read ends an event, and goes on as it is without a call: a relay cuts only a read that does not end with
    a blank line, or that follows one that left bytes waiting (`waiting` is one list for the object's life, which the
    relay may hold):

        waiting = events.waiting
        ...
        if waiting or chunk[-2:] != b"\\n\\n":
            chunk = events.cut(chunk)
    """

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting: list[bytes] = []  # the unfinished event, in the reads it came in: joined once, when it ends

    def cut(self, chunk: bytes) -> bytes:
        """The whole events that the waiting bytes and `chunk` make (b"" for none); what follows them waits."""
        waiting = self.waiting
        if not waiting:
            end = events_end(chunk)
            if end < len(chunk):
                waiting.append(chunk[end:])
                return chunk[:end]
            return chunk
        if not chunk:
            return b""
        # The blank line that ends the waiting event may begin in the waiting bytes (each read at least one byte).
        seam = b"".join(waiting[-3:])[-3:]
        end = events_end(seam + chunk) - len(seam)
        if end <= 0:
            waiting.append(chunk)  # a long event (an image as a data URL) grows in pieces, not re-joined per read
            return b""
        whole = b"".join((*waiting, chunk[:end]))
        waiting.clear()
        if end < len(chunk):
            waiting.append(chunk[end:])
        return whole

    def rest(self) -> bytes:
        """What waits, no longer waiting: an event the stream left unfinished at its end."""
        rest = b"".join(self.waiting)
        self.waiting.clear()
        return rest


def event_data(events: bytes) -> list[bytes]:
    """The data of each event in `events` (whole events, as `WholeEvents` cuts them), in order: its `data:` lines'
    values joined by line feeds, as SSE joins them; an event without data (a comment) gives none."""
    if events.find(b"\r") >= 0:  # CRLF or CR line ends: each the one line end a client reads
        events = events.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    found: list[bytes] = []
    for event in events.split(b"\n\n"):
        lines = [line for line in event.split(b"\n") if line.startswith(b"data:")]
        if not lines:
            continue
        if len(lines) == 1:  # the usual event: one line of data
            line = lines[0]
            found.append(line[6:] if line.startswith(b"data: ") else line[5:])
        else:
            found.append(b"\n".join([line[6:] if line.startswith(b"data: ") else line[5:] for line in lines]))
    return found


def split_events(events: bytes) -> list[bytes]:
    """Whole events (as `WholeEvents` cuts them) one by one, each with the blank line that ends it."""
    parts: list[bytes] = []
    start = 0
    for blank in _BLANK.finditer(events):
        parts.append(events[start : blank.end()])
        start = blank.end()
    if start < len(events):
        parts.append(events[start:])
    return parts


def events_before(events: bytes, count: int) -> bytes:
    """The events of `events` (whole events) before the one whose data `event_data` gives at position `count`."""
    parts = split_events(events)
    for at, part in enumerate(parts):
        if event_data(part):
            if count == 0:
                return b"".join(parts[:at])
            count -= 1
    return events
