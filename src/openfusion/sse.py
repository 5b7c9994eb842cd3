"""Server-sent events: data lines, the [DONE] marker, keep-alive comments and error chunks."""

from __future__ import annotations

from typing import Any

import orjson

from openfusion.errors import OpenFusionError, error_type_for_status
from openfusion.protocol import chunk_body

KEEPALIVE = b": OPENFUSION PROCESSING\n\n"
DONE = b"data: [DONE]\n\n"


def encode(payload: dict[str, Any]) -> bytes:
    """One `data:` event."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


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
