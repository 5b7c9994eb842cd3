"""Cost rules: reported cost first, then the price table, else unknown; listing refresh; worst-case estimate."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from openfusion.activity import ModelPrice, PriceTable, prices_from_listing, total_cost, worst_case_cost
from openfusion.protocol import Usage, parse_usage

LISTING = json.loads((Path(__file__).parent / "fixtures" / "openrouter_models.json").read_text())
GPT5 = ModelPrice(prompt=1.25e-6, completion=1e-5)


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
    assert prices["openai/gpt-5"] == GPT5
    assert prices["openai/gpt-5-2025-08-07"] == GPT5  # the canonical slug too
    assert prices["deepseek/deepseek-v3.2"] == ModelPrice(prompt=2.7e-7, completion=4e-7)
    assert prices["meta-llama/llama-3.3-70b-instruct:free"] == ModelPrice(prompt=0, completion=0)
    # Variable ("-1"), missing, garbled or half-given prices are unknown, not zero.
    for unknown in ("openrouter/auto", "vendor/no-pricing", "vendor/garbled", "vendor/half-priced"):
        assert unknown not in prices
    assert len(prices) == 4


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
    assert await table.refresh(fetch) == 4
    assert calls == 1
    assert table.price_of("openai/gpt-5") == GPT5
    assert table.price_of("deepseek/deepseek-v3.2") == configured
    assert table.cost_of("openai/gpt-5", _usage(1000, 100)) == pytest.approx(0.00225)
    # A later refresh replaces the listed prices: a model that left the listing is unknown again.
    table.update_listed({})
    assert table.price_of("openai/gpt-5") is None and table.price_of("deepseek/deepseek-v3.2") == configured


@dataclass(frozen=True)
class Plan:
    panel: list[str]
    judge: str
    synthesizer: str
    max_tool_calls: int
    max_completion_tokens: int


PRICES = {
    "p/a": ModelPrice(prompt=1e-6, completion=2e-6),
    "p/b": ModelPrice(prompt=3e-6, completion=5e-6),
    "p/judge": ModelPrice(prompt=1e-5, completion=3e-5),
    "p/synth": ModelPrice(prompt=2e-6, completion=4e-6),
}


def test_worst_case_estimate_by_hand() -> None:
    plan = Plan(
        panel=["p/a", "p/b"], judge="p/judge", synthesizer="p/synth", max_tool_calls=3, max_completion_tokens=1000
    )
    prompt, out, calls = 500, 1000, 3 + 1
    answers = 2 * out
    expected = (
        calls * prompt * 1e-6
        + calls * out * 2e-6  # panelist a: 4 calls
        + calls * prompt * 3e-6
        + calls * out * 5e-6  # panelist b: 4 calls
        + 2 * (prompt + answers) * 1e-5
        + 2 * out * 3e-5  # judge, with its one repair call
        + (prompt + answers + out) * 2e-6
        + out * 4e-6  # synthesizer reads answers and analysis
    )
    assert worst_case_cost(plan, PriceTable(PRICES), prompt_tokens=prompt) == pytest.approx(expected)


def test_worst_case_grows_with_tool_calls_and_synth_limit() -> None:
    table = PriceTable(PRICES)
    small = Plan(panel=["p/a"], judge="p/judge", synthesizer="p/synth", max_tool_calls=1, max_completion_tokens=100)
    large = Plan(panel=["p/a"], judge="p/judge", synthesizer="p/synth", max_tool_calls=8, max_completion_tokens=100)
    low = worst_case_cost(small, table, prompt_tokens=10)
    assert low is not None
    assert worst_case_cost(large, table, prompt_tokens=10) == pytest.approx(low + 7 * (10 * 1e-6 + 100 * 2e-6))
    capped = worst_case_cost(small, table, prompt_tokens=10, synthesizer_max_tokens=10)
    assert capped == pytest.approx(low - 90 * 4e-6)


def test_worst_case_with_the_panel_off_is_the_synthesizer_alone() -> None:
    plan = Plan(panel=[], judge="p/judge", synthesizer="p/synth", max_tool_calls=4, max_completion_tokens=100)
    assert worst_case_cost(plan, PriceTable(PRICES), prompt_tokens=50) == pytest.approx(50 * 2e-6 + 100 * 4e-6)


@pytest.mark.parametrize("unpriced", ["panel", "judge", "synthesizer"])
def test_worst_case_is_unknown_when_any_price_is(unpriced: str) -> None:
    models = {"panel": ["p/a", "p/b"], "judge": "p/judge", "synthesizer": "p/synth"}
    models[unpriced] = ["p/a", "x/unknown"] if unpriced == "panel" else "x/unknown"
    plan = Plan(max_tool_calls=1, max_completion_tokens=10, **models)  # type: ignore[arg-type]
    assert worst_case_cost(plan, PriceTable(PRICES), prompt_tokens=10) is None
