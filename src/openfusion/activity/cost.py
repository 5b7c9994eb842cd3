"""Cost: the upstream's reported cost, else a per-model price table, else unknown (None, never 0 or -1)."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from openfusion.protocol import Usage, plausible_cost, round_usd
from openfusion.variants import read_variant

log = logging.getLogger("openfusion.activity")


# A cache write unpriced is priced as Anthropic bills a 5-minute one, 1.25 times the prompt price: the dearest of the
# common providers' write prices (OpenAI and Gemini's implicit caching bill none, and report no writes).
DEFAULT_CACHE_WRITE_FACTOR = 1.25
# A 1-hour cache write (Anthropic's `ttl: "1h"`) unpriced is priced as Anthropic bills it: twice the prompt price.
DEFAULT_CACHE_WRITE_1H_FACTOR = 2.0


class ModelPrice(BaseModel):
    """A model's price in USD per token (config: `[pricing.models."openai/gpt-5"] prompt = 1.25e-6`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: float = Field(ge=0)
    completion: float = Field(ge=0)
    # The most tokens one call can produce (the context window at worst): bounds a call sent without max_tokens.
    max_completion_tokens: int | None = Field(default=None, ge=1)
    # USD per prompt token read from the provider's prompt cache; unset: the prompt price.
    input_cache_read: float | None = Field(default=None, ge=0)
    # USD per prompt token written to the provider's prompt cache; unset: 1.25 times the prompt price.
    input_cache_write: float | None = Field(default=None, ge=0)
    # USD per prompt token written to the cache for an hour (Anthropic's `ttl: "1h"`); unset: twice the prompt price.
    input_cache_write_1h: float | None = Field(default=None, ge=0)

    @property
    def cache_read(self) -> float:
        """The price of a prompt token read from the cache (unknown: the prompt price, which never under-counts)."""
        return self.prompt if self.input_cache_read is None else self.input_cache_read

    @property
    def cache_write(self) -> float:
        """The price of a prompt token written to the cache (unknown: DEFAULT_CACHE_WRITE_FACTOR × the prompt price)."""
        return self.prompt * DEFAULT_CACHE_WRITE_FACTOR if self.input_cache_write is None else self.input_cache_write

    @property
    def cache_write_1h(self) -> float:
        """The price of a prompt token written to the cache for an hour (unknown: DEFAULT_CACHE_WRITE_1H_FACTOR × the
        prompt price)."""
        if self.input_cache_write_1h is None:
            return self.prompt * DEFAULT_CACHE_WRITE_1H_FACTOR
        return self.input_cache_write_1h

    def worst_prompt(self, *, long_cache: bool = False) -> float:
        """The most one prompt token can cost: any prompt may be written to the provider's cache (for an hour, at its
        own price, when the request asks for `ttl: "1h"`: `long_cache`)."""
        return max(self.prompt, self.cache_write, self.cache_write_1h if long_cache else 0.0)

    def cost(
        self,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
    ) -> float:
        """The price of this many tokens; `prompt_tokens` counts the cache reads and writes among them, and
        `cache_write_tokens` the 1-hour writes among its writes."""
        read = min(cache_read_tokens, prompt_tokens)
        written = min(cache_write_tokens, prompt_tokens - read)
        long = min(cache_write_1h_tokens, written)
        plain = prompt_tokens - read - written
        return round_usd(
            plain * self.prompt + read * self.cache_read + (written - long) * self.cache_write
            + long * self.cache_write_1h + completion_tokens * self.completion
        )  # fmt: skip

    def worst_cost(self, *, prompt_tokens: int, completion_tokens: int, long_cache: bool = False) -> float:
        """The most this many tokens can cost: every prompt token written to the cache at the dearer price (the 1-hour
        write's among them when `long_cache`)."""
        return round_usd(prompt_tokens * self.worst_prompt(long_cache=long_cache) + completion_tokens * self.completion)


class PriceTable:
    """Per-model prices: configured ones, over prices refreshed from a provider's `/models` listing."""

    def __init__(self, configured: Mapping[str, ModelPrice] | None = None) -> None:
        self._configured = {_key(model): price for model, price in (configured or {}).items()}
        self._listed: dict[str, ModelPrice] = {}
        # Each slug's price as asked for, looked up once: a fusion asks ~10 times for the same few models (the bill's
        # calls, the worst case's parts). Emptied when the listed prices change, and when it grows past _FOUND_MAX.
        self._found: dict[str, ModelPrice | None] = {}

    def __len__(self) -> int:
        return len(self._configured.keys() | self._listed.keys())

    def price_of(self, model: str) -> ModelPrice | None:
        """The price of a model slug (case-insensitive), or None when unknown. A routing variant (`:nitro`, `:floor`,
        `:exacto`) not priced itself has its model's price: it only chooses among that model's providers, as a plain
        request's routing does. One with `:online` has none: its web search is billed apart from tokens."""
        try:
            return self._found[model]
        except KeyError:
            pass
        if len(self._found) >= _FOUND_MAX:
            self._found.clear()
        price = self._found[model] = self._look_up(model)
        return price

    def _look_up(self, model: str) -> ModelPrice | None:
        key = _key(model)
        price = self._configured.get(key) or self._listed.get(key)
        if price is not None:
            return price
        variant = read_variant(model)
        if variant.plain or variant.web_search:
            return None
        key = _key(variant.model)
        return self._configured.get(key) or self._listed.get(key)

    def cost_of(
        self, model: str, usage: Usage, reported_cost: float | None = None, *, long_writes: bool = False
    ) -> float | None:
        """Reported cost (the argument, else `usage.cost`) when given and plausible, else priced from the table, else
        None.

        Cache writes reported without their 1-hour share (`Usage.splits_cache_writes`: a chat usage's
        `cache_write_tokens`, Anthropic's usage without `cache_creation`) are 5-minute ones, unless `long_writes`: the
        request asked for 1-hour writes only, so every write is one. (A request asking for both leaves them 5-minute
        ones: which share is which, only the provider knows.)"""
        reported = plausible_cost(reported_cost if reported_cost is not None else usage.cost)
        if reported is not None:
            return reported
        price = self.price_of(model)
        if price is None:
            return None
        return price.cost(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cache_write_1h_tokens=(
                usage.cache_write_tokens
                if long_writes and not usage.splits_cache_writes
                else usage.cache_write_1h_tokens
            ),
        )

    def update_listed(self, prices: Mapping[str, ModelPrice]) -> None:
        """Replace the refreshed prices (configured prices still win over them)."""
        self._listed = {_key(model): price for model, price in prices.items()}
        self._found = {}

    async def refresh(self, fetch: Callable[[], Awaitable[Any]]) -> int:
        """Reload listed prices from `fetch()` (an OpenRouter-format `/models` payload); returns how many."""
        prices = prices_from_listing(await fetch())
        self.update_listed(prices)
        log.info("price table refreshed: %d model prices listed", len(prices))
        return len(prices)


# Slugs whose price `price_of` remembers at most: the models a server routes are few, but a client names any it likes.
_FOUND_MAX = 1024


def total_cost(costs: Iterable[float | None]) -> float | None:
    """The sum of several calls' costs; unknown when any one is unknown (a partial sum would under-report)."""
    total = 0.0
    for cost in costs:
        if cost is None:
            return None
        total += cost
    return round_usd(total)


def _key(model: str) -> str:
    return model.strip().lower()


def prices_from_listing(payload: Any) -> dict[str, ModelPrice]:
    """Prices from a `/models` payload: `data[].pricing.prompt/completion` (USD per token, as strings), with
    `input_cache_read` and `input_cache_write` when listed.

    Entries without both prices, or with a negative one (OpenRouter's "-1" for a router whose price
    depends on where it routes), are skipped: their price is unknown, not zero. A listing prices cache
    writes where the model bills them: an entry without `input_cache_write` bills a write as plain input,
    for an hour too. A listing names no 1-hour write price: one that bills writes has the default (twice the
    prompt price, as Anthropic bills it).
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
        cache_write = _price(entry["pricing"].get("input_cache_write"))
        price = ModelPrice(
            prompt=prompt,
            completion=completion,
            max_completion_tokens=_output_limit(entry),
            input_cache_read=_price(entry["pricing"].get("input_cache_read")),
            input_cache_write=prompt if cache_write is None else cache_write,
            input_cache_write_1h=prompt if cache_write is None else None,
        )
        for name in (entry.get("id"), entry.get("canonical_slug")):
            if isinstance(name, str) and name:
                prices[name] = price
    return prices


def _output_limit(entry: dict[str, Any]) -> int | None:
    """The most a call can produce: the context window (a provider's own output cap may be lower, never higher)."""
    top = entry.get("top_provider") if isinstance(entry.get("top_provider"), dict) else {}
    windows = [value for value in (entry.get("context_length"), top.get("context_length")) if _is_count(value)]
    return max(windows) if windows else None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _price(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None
