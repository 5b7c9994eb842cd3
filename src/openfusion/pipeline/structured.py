"""Structured-output dialects: ways to ask a model for schema-shaped JSON, best first, remembered per model.

Providers differ: OpenAI-style servers take `json_schema`; llama.cpp's server rejects it (with an HTTP 500
naming `json_object`) yet enforces `{"type": "json_object", "schema": ...}` by grammar; others know neither,
and then the prompt's own description of the JSON plus the lenient parser have to do.
"""

from __future__ import annotations

from typing import Any

from openfusion.errors import UpstreamStatusError
from openfusion.pipeline.analysis import ANALYSIS_SCHEMA, RESPONSE_FORMAT
from openfusion.pipeline.sampling import MODELS_KEPT, SamplingMemory

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
    """Per client and model, the first dialect still worth trying; and the sampling parameters models refuse (per
    client and model too: `SamplingMemory`).

    Learned once per process. Per model, not per provider: one provider (OpenRouter) serves models that differ, and a
    judge a client chose that cannot do `json_schema` must not make every other client's judge there do without.
    Per client too (`owned_by`): a judge call fails with words about a schema for reasons a client's own request can
    bring about (an error echoing its conversation, a provider it routed to), so what one client's runs learn steps
    down only its own judge; each client pays at most one refused call per dialect and model to learn it.
    """

    def __init__(self) -> None:
        self._start: dict[tuple[str | None, str], int] = {}  # (owner, model): the first dialect worth trying
        self._owner: str | None = None
        self.sampling = SamplingMemory()

    def owned_by(self, owner: str | None) -> DialectMemory:
        """One client's view (`owner`: its key's name; None without keys), kept in this memory: what its runs learn
        about a dialect holds for its own runs alone."""
        view = DialectMemory.__new__(DialectMemory)
        view._start, view._owner, view.sampling = self._start, owner, self.sampling.owned_by(owner)
        return view

    def candidates(self, model: str) -> tuple[str, ...]:
        """The dialects to try for a model (its slug), best first."""
        return DIALECTS[self._start.get((self._owner, model), 0) :]

    def rejected(self, model: str, dialect: str) -> None:
        """The model refused `dialect`: never ask it that way again (for this client)."""
        key = (self._owner, model)
        if key not in self._start and len(self._start) >= MODELS_KEPT:
            return  # past the bound a step down costs one refused call each, never memory
        self._start[key] = max(self._start.get(key, 0), DIALECTS.index(dialect) + 1)
