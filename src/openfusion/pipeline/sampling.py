"""Sampling parameters a model refuses: dropped after its first refusal, remembered for the process per client key,
model and value (and the reasoning settings the refusal came with).

Reasoning models (OpenAI's o-series and GPT-5, some of Anthropic's with thinking on) answer a `temperature`,
`top_p` and the like with HTTP 400. openfusion asks the judge for temperature 0 and passes the plan's or
the client's sampling on; such a model gets the call again without the refused parameter, and is never
sent it again.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack
from typing import Any

import orjson

from openfusion.errors import UpstreamStatusError
from openfusion.upstream.client import Completion, UpstreamClient

SAMPLING = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "seed",
    "logit_bias",
    "logprobs",
    "top_logprobs",
)
_NAMED = {name: re.compile(rf"\b{name}\b") for name in SAMPLING}
_REFUSAL_STATUSES = (400, 422)


def names(parameters: Iterable[str]) -> list[str]:
    """Parameter names in SAMPLING's order, once each (for a report)."""
    given = set(parameters)
    return [name for name in SAMPLING if name in given]


def refused_parameter(error: UpstreamStatusError, body: Mapping[str, Any]) -> str | None:
    """The sampling parameter the body sent that an upstream's refusal names (its `param`, else its words)."""
    if error.upstream_status not in _REFUSAL_STATUSES:
        return None
    text = _provider_words(error).lower()
    return next((name for name in SAMPLING if body.get(name) is not None and _NAMED[name].search(text)), None)


def _provider_words(error: UpstreamStatusError) -> str:
    """What the provider said: its error's `param` and message (not our own prefix, which names the model)."""
    try:
        data = orjson.loads(error.body or b"")
    except orjson.JSONDecodeError:
        return error.body.decode("utf-8", "replace") if error.body else ""
    detail = data.get("error") if isinstance(data, dict) else None
    if isinstance(detail, dict):
        return f"{detail.get('param') or ''} {detail.get('message') or ''}"
    return str(detail or data)


class SamplingMemory:
    """Per client and model, the sampling parameters it refused, with the values it refused them with; learned once per
    process.

    A refusal is remembered with its value: a model that refuses `temperature` refuses every value (each is learned
    on its first refusal), but one that refuses `top_p: 5` as out of range takes `top_p: 0.3`. Remembering the
    parameter alone let one client's bad value silently drop every other client's good one, for every key. And with
    the reasoning settings it came with: Anthropic's models refuse a temperature other than 1 with thinking on and
    take it with thinking off, so one client's reasoning request must not drop the temperature of every other
    request (the judge's own 0 among them) sent without it. Per client too (`owned_by`): a refusal may come of what
    a client's own request brought about (a provider it routed to, words echoing its conversation), so what one
    key's requests learn leaves out parameters from its own requests alone; each key pays at most one refused call
    per value to learn it.
    """

    def __init__(self) -> None:
        # (owner, model) -> reasoning settings (as JSON) -> parameter -> values refused (as JSON)
        self._refused: dict[tuple[str | None, str], dict[bytes, dict[str, set[bytes]]]] = {}
        self._owner: str | None = None

    def owned_by(self, owner: str | None) -> SamplingMemory:
        """One client's view (`owner`: its key's name; None without keys), kept in this memory: what its requests
        learn leaves parameters out of its own requests alone."""
        view = SamplingMemory.__new__(SamplingMemory)
        view._refused, view._owner = self._refused, owner
        return view

    def prepare(self, model: str, body: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[str]]:
        """The body without the values `model` refused before (for this client, with the same reasoning settings), and
        the names left out."""
        settings = self._refused.get((self._owner, model))
        if not settings:  # the usual case: the body as it is, not a copy (the upstream client copies it anyway)
            return body, []
        refused = settings.get(_reasoning(body))
        if not refused:
            return body, []
        dropped = [
            name
            for name in SAMPLING
            if name in refused and body.get(name) is not None and _value(body[name]) in refused[name]
        ]
        if not dropped:
            return body, []
        return {key: value for key, value in body.items() if key not in dropped}, dropped

    def refused(self, model: str, parameter: str, value: Any, sent: Mapping[str, Any] | None = None) -> None:
        """`model` refused `parameter` with `value` in the body `sent`: never send that again for this client with the
        same reasoning settings (a bounded number of clients and models, settings and values each)."""
        key = (self._owner, model)
        if key not in self._refused and len(self._refused) >= MODELS_KEPT:
            return  # past the bound a refusal costs one refused call each, never memory
        settings = self._refused.setdefault(key, {})
        reasoning = _reasoning(sent or {})
        if reasoning not in settings and len(settings) >= _SETTINGS_KEPT:
            return
        values = settings.setdefault(reasoning, {}).setdefault(parameter, set())
        if len(values) < _VALUES_KEPT:
            values.add(_value(value))


# (client, model) pairs remembered in all, which keys and their choices of model multiply: past these, a refusal costs
# one refused call each, never memory without bound.
MODELS_KEPT = 1024


# Values remembered per model and parameter: a client sending a new bad value with every request costs one refused
# call each, never memory without bound.
_VALUES_KEPT = 64


# Reasoning settings remembered per model, which clients choose: past these, the same.
_SETTINGS_KEPT = 16
# The fields that turn a model's reasoning on or set its effort.
_REASONING = ("reasoning", "reasoning_effort")


def _value(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _reasoning(body: Mapping[str, Any]) -> bytes:
    """A body's reasoning settings, as a key: what else decides which sampling values a model takes."""
    return _value([body.get(name) for name in _REASONING])


async def complete(
    upstream: UpstreamClient, model: str, body: Mapping[str, Any], *, memory: SamplingMemory
) -> tuple[Completion, list[str]]:
    """A completion, stepping down the sampling parameters the model refuses; and the names dropped."""
    # The call is awaited here, not through a generic helper: every coroutine layer between a pipeline
    # stage and the HTTP transport is resumed again on each of the call's wake-ups.
    sent, dropped = memory.prepare(model, body)
    while True:
        try:
            return await upstream.complete(model, sent), dropped
        except UpstreamStatusError as exc:
            parameter = refused_parameter(exc, sent)
            if parameter is None:
                raise
        sent = _stepped_down(parameter, model, sent, memory, dropped)


async def open_stream(
    upstream: UpstreamClient,
    model: str,
    body: Mapping[str, Any],
    *,
    memory: SamplingMemory,
    stack: AsyncExitStack,
) -> tuple[AsyncIterator[dict[str, Any]], list[str]]:
    """A stream opened on `stack` (closed with it), stepping down refused sampling parameters."""
    sent, dropped = memory.prepare(model, body)
    while True:
        try:
            return await stack.enter_async_context(upstream.stream(model, sent)), dropped
        except UpstreamStatusError as exc:
            parameter = refused_parameter(exc, sent)
            if parameter is None:
                raise
        sent = _stepped_down(parameter, model, sent, memory, dropped)


def _stepped_down(
    parameter: str, model: str, sent: Mapping[str, Any], memory: SamplingMemory, dropped: list[str]
) -> dict[str, Any]:
    """The body without the sampling parameter the model refused (remembered, and added to `dropped`).

    Any other failure its callers re-raise themselves: a helper raising an error it was given holds it in its own
    frame, which the error's traceback holds too, a reference cycle kept until the garbage collector runs.
    """
    memory.refused(model, parameter, sent[parameter], sent)
    dropped.append(parameter)
    return {key: value for key, value in sent.items() if key != parameter}
