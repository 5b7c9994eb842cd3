"""Structured-output dialects: ways to ask a model for schema-shaped JSON, best first, remembered per model.

Providers differ: OpenAI-style servers take `json_schema`; llama.cpp's server rejects it (with an HTTP 500
naming `json_object`) yet enforces `{"type": "json_object", "schema": ...}` by grammar; others know neither,
and then the prompt's own description of the JSON plus the lenient parser have to do.
"""

from __future__ import annotations

from typing import Any

from openfusion.errors import UpstreamStatusError
from openfusion.pipeline.analysis import ANALYSIS_SCHEMA, RESPONSE_FORMAT
from openfusion.pipeline.sampling import SamplingMemory

DIALECTS = ("json_schema", "json_object", "instructions")

_FORMATS: dict[str, dict[str, Any] | None] = {
    "json_schema": RESPONSE_FORMAT,
    "json_object": {"type": "json_object", "schema": ANALYSIS_SCHEMA},
    "instructions": None,  # no response_format: the judge prompt spells out the JSON shape
}

_MENTIONS = ("response_format", "json_schema", "json_object", "structured output", "schema")


def response_format(dialect: str) -> dict[str, Any] | None:
    """The `response_format` a dialect sends (None: send none)."""
    return _FORMATS[dialect]


def rejects_response_format(error: UpstreamStatusError) -> bool:
    """Whether an upstream error says it cannot do the requested structured output."""
    status = error.upstream_status or 0
    if status < 400 or status in (401, 402, 403, 404, 408, 429):
        return False
    text = error.message.lower()
    return any(word in text for word in _MENTIONS)


class DialectMemory:
    """Per model, the first dialect still worth trying, and the sampling parameters it refuses.

    Learned once per process. Per model, not per provider: one provider (OpenRouter) serves models that differ, and a
    judge a client chose that cannot do `json_schema` must not make every other client's judge there do without.
    """

    def __init__(self) -> None:
        self._start: dict[str, int] = {}
        self.sampling = SamplingMemory()

    def candidates(self, model: str) -> tuple[str, ...]:
        """The dialects to try for a model (its slug), best first."""
        return DIALECTS[self._start.get(model, 0) :]

    def rejected(self, model: str, dialect: str) -> None:
        """The model refused `dialect`: never ask it that way again."""
        self._start[model] = max(self._start.get(model, 0), DIALECTS.index(dialect) + 1)
