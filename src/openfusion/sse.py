"""Server-sent events: data lines, the [DONE] marker, keep-alive comments and error chunks."""

from __future__ import annotations

from typing import Any

import orjson

from openfusion.errors import OpenFusionError, error_type_for_status
from openfusion.protocol import chunk_body

KEEPALIVE = b": OPENFUSION PROCESSING\n\n"
DONE = b"data: [DONE]\n\n"


# U+0085 (NEL), U+2028 and U+2029 in UTF-8. SSE ends lines only at CR and LF, but Python's `str.splitlines()` (and so
# httpx's `iter_lines`) ends them here too: written raw, they cut an event in two for such a client.
_NEL, _LS, _PS = b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9"


def dumps(payload: Any) -> bytes:
    """JSON for a `data:` line: orjson's, with NEL, U+2028 and U+2029 as escapes (the same JSON, on one line)."""
    raw = orjson.dumps(payload)
    return raw if raw.isascii() else _escaped(raw)  # almost every event is ASCII: one pass at memchr's speed


def _escaped(raw: bytes) -> bytes:
    # Their lead bytes first, each found at memchr's speed: most other text (accents, Cyrillic, CJK) has neither.
    if raw.find(b"\xc2") >= 0:
        raw = raw.replace(_NEL, b"\\u0085")
    if raw.find(b"\xe2") >= 0:
        raw = raw.replace(_LS, b"\\u2028").replace(_PS, b"\\u2029")
    return raw


def encode(payload: dict[str, Any]) -> bytes:
    """One `data:` event."""
    raw = orjson.dumps(payload)  # as `dumps`, without a call more per event on the hottest path
    return b"data: " + (raw if raw.isascii() else _escaped(raw)) + b"\n\n"


def encode_named(events: list[dict[str, Any]]) -> bytes:
    """Events with their `event:` line (the Responses and Messages APIs): each named by its `type`."""
    return b"".join([b"event: " + e["type"].encode() + b"\ndata: " + dumps(e) + b"\n\n" for e in events])


def error_chunk(error: OpenFusionError, *, generation_id: str, model: str, created: int) -> dict[str, Any]:
    """The final chunk of a stream that failed after it began (OpenAI fields plus OpenRouter's metadata)."""
    body = error.to_body()
    metadata = dict(body.get("metadata") or {})
    upstream_status = getattr(error, "upstream_status", None)
    metadata.setdefault("error_type", error_type_for_status(upstream_status or error.status_code))
    body["metadata"] = metadata
    return chunk_body(
        generation_id=generation_id,
        model=model,
        created=created,
        choices=[{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        extra={"error": body},
    )
