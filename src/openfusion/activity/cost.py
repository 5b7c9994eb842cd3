"""Cost: the upstream's reported cost, else a per-model price table, else unknown (None, never 0 or -1)."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from openfusion.protocol import Usage

log = logging.getLogger("openfusion.activity")

# How many times the judge may be called: once, plus one repair call when its JSON is invalid.
JUDGE_CALLS = 2


class ModelPrice(BaseModel):
    """A model's price in USD per token (config: `[pricing.models."openai/gpt-5"] prompt = 1.25e-6`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: float = Field(ge=0)
    completion: float = Field(ge=0)

    def cost(self, *, prompt_tokens: int, completion_tokens: int) -> float:
        """The price of this many tokens."""
        return prompt_tokens * self.prompt + completion_tokens * self.completion


class PriceTable:
    """Per-model prices: configured ones, over prices refreshed from a provider's `/models` listing."""

    def __init__(self, configured: Mapping[str, ModelPrice] | None = None) -> None:
        self._configured = {_key(model): price for model, price in (configured or {}).items()}
        self._listed: dict[str, ModelPrice] = {}

    def __len__(self) -> int:
        return len(self._configured.keys() | self._listed.keys())

    def price_of(self, model: str) -> ModelPrice | None:
        """The price of a model slug (case-insensitive), or None when unknown."""
        key = _key(model)
        return self._configured.get(key) or self._listed.get(key)

    def cost_of(self, model: str, usage: Usage, reported_cost: float | None = None) -> float | None:
        """Reported cost (the argument, else `usage.cost`) when given, else priced from the table, else None."""
        reported = reported_cost if reported_cost is not None else usage.cost
        if reported is not None and math.isfinite(reported) and reported >= 0:
            return float(reported)
        price = self.price_of(model)
        if price is None:
            return None
        return price.cost(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)

    def update_listed(self, prices: Mapping[str, ModelPrice]) -> None:
        """Replace the refreshed prices (configured prices still win over them)."""
        self._listed = {_key(model): price for model, price in prices.items()}

    async def refresh(self, fetch: Callable[[], Awaitable[Any]]) -> int:
        """Reload listed prices from `fetch()` (an OpenRouter-format `/models` payload); returns how many."""
        prices = prices_from_listing(await fetch())
        self.update_listed(prices)
        log.info("price table refreshed: %d model prices listed", len(prices))
        return len(prices)


def total_cost(costs: Iterable[float | None]) -> float | None:
    """The sum of several calls' costs; unknown when any one is unknown (a partial sum would under-report)."""
    total = 0.0
    for cost in costs:
        if cost is None:
            return None
        total += cost
    return total


def _key(model: str) -> str:
    return model.strip().lower()


def prices_from_listing(payload: Any) -> dict[str, ModelPrice]:
    """Prices from a `/models` payload: `data[].pricing.prompt/completion` (USD per token, as strings).

    Entries without both prices, or with a negative one (OpenRouter's "-1" for a router whose price
    depends on where it routes), are skipped: their price is unknown, not zero.
    """
    data = payload.get("data") if isinstance(payload, dict) else None
    prices: dict[str, ModelPrice] = {}
    for entry in data if isinstance(data, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("pricing"), dict):
            continue
        prompt = _price(entry["pricing"].get("prompt"))
        completion = _price(entry["pricing"].get("completion"))
        if prompt is None or completion is None:
            continue
        price = ModelPrice(prompt=prompt, completion=completion)
        for name in (entry.get("id"), entry.get("canonical_slug")):
            if isinstance(name, str) and name:
                prices[name] = price
    return prices


def _price(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


class PlanShape(Protocol):
    """What a cost estimate needs of a fusion plan (pipeline.plan.FusionPlan fits)."""

    @property
    def panel(self) -> Sequence[str]: ...
    @property
    def judge(self) -> str: ...
    @property
    def synthesizer(self) -> str: ...
    @property
    def max_tool_calls(self) -> int: ...
    @property
    def max_completion_tokens(self) -> int: ...


def worst_case_cost(
    plan: PlanShape, table: PriceTable, *, prompt_tokens: int, synthesizer_max_tokens: int | None = None
) -> float | None:
    """The most a fusion run can cost before it starts, or None when any model's price is unknown.

    Each panelist makes up to max_tool_calls + 1 calls of at most max_completion_tokens each; the
    judge reads every answer (and may be called twice: one repair); the synthesizer reads the
    answers and the analysis. Prompts count the conversation (`prompt_tokens`) plus what each stage
    reads; tool results fed back to a panelist are not knowable up front and are not counted.
    """
    out = plan.max_completion_tokens
    answers = len(plan.panel) * out
    parts: list[tuple[str, int, int]] = []  # (model, prompt tokens, completion tokens)
    for model in plan.panel:
        calls = plan.max_tool_calls + 1
        parts.append((model, calls * prompt_tokens, calls * out))
    if plan.panel:
        parts.append((plan.judge, JUDGE_CALLS * (prompt_tokens + answers), JUDGE_CALLS * out))
        synth_prompt = prompt_tokens + answers + out
    else:
        synth_prompt = prompt_tokens  # panel off: the synthesizer answers the conversation alone
    parts.append((plan.synthesizer, synth_prompt, synthesizer_max_tokens or out))
    total = 0.0
    for model, prompt, completion in parts:
        price = table.price_of(model)
        if price is None:
            return None
        total += price.cost(prompt_tokens=prompt, completion_tokens=completion)
    return total
