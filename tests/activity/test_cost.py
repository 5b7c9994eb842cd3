"""Cost rules: reported cost first, then the price table, else unknown; listing refresh."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from openfusion.activity import ModelPrice, PriceTable, prices_from_listing, total_cost
from openfusion.protocol import Usage, parse_usage

LISTING = json.loads((Path(__file__).parent / "fixtures" / "openrouter_models.json").read_text())
GPT5 = ModelPrice(prompt=1.25e-6, completion=1e-5)
# listed: a write costs what plain input does, for an hour too
FREE = ModelPrice(prompt=0, completion=0, input_cache_write=0, input_cache_write_1h=0)


def _usage(prompt: int, completion: int, cost: float | None = None) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion, cost=cost)


def test_reported_cost_wins_over_the_table() -> None:
    table = PriceTable({"openai/gpt-5": GPT5})
    assert table.cost_of("openai/gpt-5", _usage(1000, 100), reported_cost=0.5) == 0.5
    # The upstream's usage.cost (as parse_usage reads it) counts as reported too.
    assert table.cost_of("openai/gpt-5", parse_usage({"prompt_tokens": 1000, "cost": 0.25})) == 0.25


def test_a_reported_zero_is_a_real_zero() -> None:
    assert PriceTable().cost_of("meta/free-model", _usage(10, 10), reported_cost=0.0) == 0.0


def test_priced_from_the_table_when_not_reported() -> None:
    table = PriceTable({"openai/gpt-5": GPT5})
    assert table.cost_of("openai/gpt-5", _usage(1000, 100)) == pytest.approx(1000 * 1.25e-6 + 100 * 1e-5)
    assert table.cost_of("OpenAI/GPT-5", _usage(2, 0)) == pytest.approx(2.5e-6)  # slugs are case-insensitive


def test_cache_reads_and_writes_are_priced_apart_from_plain_input() -> None:
    """`prompt_tokens` counts the cache reads and writes among them (OpenRouter's `prompt_tokens_details`)."""
    claude = ModelPrice(prompt=3e-6, completion=1.5e-5, input_cache_read=3e-7, input_cache_write=3.75e-6)
    table = PriceTable({"anthropic/claude-sonnet-4.5": claude, "openai/gpt-5": GPT5})
    usage = parse_usage({"prompt_tokens": 1000, "completion_tokens": 10,
                         "prompt_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 700}})  # fmt: skip
    assert (usage.cache_read_tokens, usage.cache_write_tokens) == (200, 700)
    expected = 100 * 3e-6 + 200 * 3e-7 + 700 * 3.75e-6 + 10 * 1.5e-5
    assert table.cost_of("anthropic/claude-sonnet-4.5", usage) == pytest.approx(expected)
    # Unpriced cache tokens: a read at the prompt price (never under-counted), a write at 1.25 times it.
    assert table.cost_of("openai/gpt-5", usage) == pytest.approx((300 + 700 * 1.25) * 1.25e-6 + 10 * 1e-5)
    # A reported cost still wins.
    assert table.cost_of("anthropic/claude-sonnet-4.5", usage.model_copy(update={"cost": 0.01})) == 0.01


def test_cache_counts_beyond_the_prompt_are_bounded_by_it() -> None:
    """A garbled report (more cached than prompt tokens) prices no more tokens than the prompt has, none negative."""
    price = ModelPrice(prompt=1.0, completion=0.0, input_cache_read=0.5, input_cache_write=2.0)
    # Reads first: 8 read, and of the 8 written only the 2 the prompt has left.
    assert price.cost(prompt_tokens=10, completion_tokens=0, cache_read_tokens=8, cache_write_tokens=8) == 8.0
    assert price.cost(prompt_tokens=10, completion_tokens=0, cache_read_tokens=30) == 5.0
    assert parse_usage({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": -3}}).cache_read_tokens == 0


def test_unknown_price_and_no_report_is_unknown_not_zero() -> None:
    table = PriceTable({"openai/gpt-5": GPT5})
    assert table.cost_of("vendor/unpriced", _usage(1000, 100)) is None
    assert table.cost_of("vendor/unpriced", _usage(0, 0)) is None


@pytest.mark.parametrize("bogus", [-1.0, math.nan, math.inf])
def test_a_bogus_reported_cost_falls_back(bogus: float) -> None:
    table = PriceTable({"openai/gpt-5": GPT5})
    assert table.cost_of("openai/gpt-5", _usage(0, 10), reported_cost=bogus) == pytest.approx(1e-4)
    assert PriceTable().cost_of("openai/gpt-5", _usage(0, 10), reported_cost=bogus) is None


def test_total_cost_is_unknown_when_any_part_is() -> None:
    assert total_cost([0.5, 0.25, 0.0]) == 0.75
    assert total_cost([]) == 0.0
    assert total_cost([0.5, None, 0.25]) is None


def test_prices_from_an_openrouter_listing() -> None:
    prices = prices_from_listing(LISTING)
    # The context window bounds what one call can produce (for a worst case without max_tokens).
    # Cache reads at their listed price; a model listed without a cache-write price bills a write as plain input.
    listed = ModelPrice(prompt=1.25e-6, completion=1e-5, max_completion_tokens=400_000, input_cache_read=1.25e-7,
                        input_cache_write=1.25e-6, input_cache_write_1h=1.25e-6)  # fmt: skip
    assert prices["openai/gpt-5"] == listed
    assert prices["openai/gpt-5-2025-08-07"] == listed  # the canonical slug too
    assert prices["anthropic/claude-sonnet-4.5"] == ModelPrice(prompt=3e-6, completion=1.5e-5, input_cache_read=3e-7,
                                                               input_cache_write=3.75e-6)  # fmt: skip
    assert prices["deepseek/deepseek-v3.2"] == ModelPrice(prompt=2.7e-7, completion=4e-7, input_cache_write=2.7e-7,
                                                          input_cache_write_1h=2.7e-7)  # fmt: skip
    assert prices["meta-llama/llama-3.3-70b-instruct:free"] == FREE
    # Variable ("-1"), missing, garbled or half-given prices are unknown, not zero.
    for unknown in ("openrouter/auto", "vendor/no-pricing", "vendor/garbled", "vendor/half-priced"):
        assert unknown not in prices
    assert len(prices) == 5


def test_a_routing_variant_has_its_models_price_and_a_web_search_none() -> None:
    """OpenRouter lists no `:nitro`, `:floor`, `:exacto` entries: they choose among the model's providers. `:online`
    adds a web search billed apart from tokens; a catalog variant (`:free`) is an entry of its own."""
    table = PriceTable({"vendor/m:exacto": ModelPrice(prompt=9, completion=9)})
    table.update_listed(prices_from_listing(LISTING))
    gpt5 = table.price_of("openai/gpt-5")
    assert table.price_of("openai/gpt-5:nitro") == table.price_of("openai/gpt-5:FLOOR") == gpt5
    assert table.price_of("vendor/m:exacto") == ModelPrice(prompt=9, completion=9)  # priced itself: its own price
    assert table.price_of("openai/gpt-5:online") is None and table.price_of("openai/gpt-5:nitro:online") is None
    assert table.price_of("meta-llama/llama-3.3-70b-instruct:free:nitro") == FREE
    assert table.price_of("openai/gpt-5:free") is None


@pytest.mark.parametrize("payload", [None, [], {"data": "nope"}, {"data": [1, "x", {"id": "a", "pricing": 3}]}])
def test_a_malformed_listing_gives_no_prices(payload: Any) -> None:
    assert prices_from_listing(payload) == {}


async def test_refresh_from_an_injected_fetch_and_configured_prices_win() -> None:
    configured = ModelPrice(prompt=1e-6, completion=2e-6)
    table = PriceTable({"deepseek/deepseek-v3.2": configured})
    calls = 0

    async def fetch() -> Any:
        nonlocal calls
        calls += 1
        return LISTING

    assert table.price_of("openai/gpt-5") is None
    assert await table.refresh(fetch) == 5
    assert calls == 1
    assert table.price_of("openai/gpt-5") == prices_from_listing(LISTING)["openai/gpt-5"]
    assert table.price_of("deepseek/deepseek-v3.2") == configured
    assert table.cost_of("openai/gpt-5", _usage(1000, 100)) == pytest.approx(0.00225)
    # A later refresh replaces the listed prices: a model that left the listing is unknown again.
    table.update_listed({})
    assert table.price_of("openai/gpt-5") is None and table.price_of("deepseek/deepseek-v3.2") == configured


def test_one_hour_cache_writes_are_priced_apart_from_five_minute_ones() -> None:
    """Anthropic bills a 1-hour write at twice the input price (`cache_creation.ephemeral_1h_input_tokens`, counted
    among `cache_creation_input_tokens`): priced as a 5-minute write, each was under-counted by 0.75 of the prompt."""
    details = {"cache_write_tokens": 800, "cache_write_1h_tokens": 600}
    usage = parse_usage({"prompt_tokens": 1000, "completion_tokens": 0, "prompt_tokens_details": details})
    assert usage.cache_write_1h_tokens == 600
    unsaid = ModelPrice(prompt=1.0, completion=0.0)  # 5-minute writes at 1.25, 1-hour ones at 2
    assert PriceTable({"m": unsaid}).cost_of("m", usage) == pytest.approx(200 + 200 * 1.25 + 600 * 2.0)
    priced = ModelPrice(prompt=1.0, completion=0.0, input_cache_write=1.5, input_cache_write_1h=3.0)
    assert PriceTable({"m": priced}).cost_of("m", usage) == pytest.approx(200 + 200 * 1.5 + 600 * 3.0)
    # More 1-hour writes than writes: no more than the writes are priced at the 1-hour price.
    assert priced.cost(prompt_tokens=10, completion_tokens=0, cache_write_tokens=4, cache_write_1h_tokens=9) == 18.0
    # A listing's model that bills writes as plain input does so for an hour too.
    listed = prices_from_listing({"data": [{"id": "x/y", "pricing": {"prompt": "1", "completion": "0"}}]})["x/y"]
    assert listed.cost(prompt_tokens=10, completion_tokens=0, cache_write_tokens=10, cache_write_1h_tokens=10) == 10


def test_prices_looked_up_once_stay_right_past_the_tables_memory() -> None:
    """`price_of` remembers each slug's price as asked for (a fusion asks ~10 times for its few models): the remembered
    answers are the table's, for any spelling of a slug, and the memory stays bounded whatever slugs clients name."""
    table = PriceTable({"vendor/m": ModelPrice(prompt=1, completion=2)})
    for i in range(3000):
        assert table.price_of(f"client/any-{i}") is None
        assert table.price_of(" Vendor/M ") == table.price_of("vendor/m:nitro") == ModelPrice(prompt=1, completion=2)
        assert table.price_of("vendor/m:online") is None
    assert len(table._found) <= 1024
