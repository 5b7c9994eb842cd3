"""The worst-case estimate: every model a request can call, priced by hand, and why it may be unbounded."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest

from openfusion.activity import ModelPrice, PriceTable
from openfusion.errors import CostLimitExceeded
from openfusion.pipeline.budget import (
    URL_IMAGE_TOKENS,
    URL_MEDIA_TOKENS,
    WorstCase,
    asks_long_cache,
    cache_ttls,
    priced,
    prompt_tokens_upper_bound,
    server_text,
)
from openfusion.pipeline.plan import FusionPlan, plan_fusion
from openfusion.pipeline.reach import reach_of
from openfusion.pipeline.tool_mode import MAX_OUTER_CALLS
from openfusion.presets import Preset
from openfusion.protocol import ChatRequest
from openfusion.settings import ProviderConfig, Settings
from openfusion.upstream.providers import ProviderRegistry

LAB = Preset(
    name="lab",
    analysis_models=["p/a", "p/b"],
    model="p/judge",
    synthesis_model="p/synth",
    max_tool_calls=3,
    max_completion_tokens=1000,
    tools=["web_search"],
)
PLAIN = Preset(
    name="plain",
    analysis_models=["p/a"],
    model="p/judge",
    synthesis_model="p/synth",
    max_completion_tokens=100,
    tools=[],
    judge_fallbacks=["p/j2"],
)
PRESETS = {"lab": LAB, "plain": PLAIN}
ANY_MODEL = [ProviderConfig(name="t", base_url="http://127.0.0.1:1/v1", models=["*"])]
REGISTRY = ProviderRegistry.from_settings(Settings(providers=ANY_MODEL, builtin_providers=False), {})
# Models that bill a cache write as plain input: the sums by hand price every prompt token at the prompt price.
PRICES = PriceTable(
    {
        "p/a": ModelPrice(prompt=1e-6, input_cache_write=1e-6, completion=2e-6),
        "p/b": ModelPrice(prompt=3e-6, input_cache_write=3e-6, completion=5e-6),
        "p/judge": ModelPrice(prompt=1e-5, input_cache_write=1e-5, completion=3e-5),
        "p/j2": ModelPrice(prompt=1e-5, input_cache_write=1e-5, completion=1e-5),
        "p/synth": ModelPrice(prompt=2e-6, input_cache_write=2e-6, completion=4e-6),
        "p/outer": ModelPrice(prompt=1e-6, input_cache_write=1e-6, completion=1e-6, max_completion_tokens=5000),
        "p/cheap": ModelPrice(prompt=1e-7, input_cache_write=1e-7, completion=1e-7),
        "p/windowed": ModelPrice(prompt=1e-6, input_cache_write=1e-6, completion=1e-6, max_completion_tokens=8000),
    }
)
QUESTION = "Why is the sky blue? " * 60
P = prompt_tokens_upper_bound(ChatRequest(model="m", messages=[{"role": "user", "content": QUESTION}]))
OWN = server_text()  # openfusion's own instructions, schemas and tool definitions in its calls' prompts


def estimate(**body: Any) -> float | None:
    chat, plan = resolve(**body)
    return worst(chat, plan).estimate.usd


def worst(chat: ChatRequest, plan: FusionPlan | None) -> WorstCase:
    return WorstCase(chat, plan, reach_of(chat, plan), prices=PRICES)


def resolve(**body: Any) -> tuple[ChatRequest, FusionPlan | None]:
    chat = ChatRequest.model_validate({"messages": [{"role": "user", "content": QUESTION}], **body})
    return chat, plan_fusion(chat, presets=PRESETS, default_preset="lab", registry=REGISTRY)


def test_the_prompt_bound_is_one_token_per_three_characters_of_messages_and_tools() -> None:
    messages = [{"role": "user", "content": QUESTION}]
    assert math.ceil(len(json.dumps({"messages": messages}, separators=(",", ":"))) / 3) == P
    tool = {"type": "function", "function": {"name": "get_weather", "description": "x" * 300}}
    with_tools = ChatRequest(model="m", messages=messages, tools=[tool])
    assert prompt_tokens_upper_bound(with_tools) > P + 100


def test_media_the_provider_fetches_counts_an_allowance_each() -> None:
    """A URL or a file id is a few characters in the body and thousands of tokens at the provider; media given as
    data is in the body, counted by its length."""

    def bound(*parts: dict[str, Any]) -> int:
        text = {"type": "text", "text": "Describe these."}
        return prompt_tokens_upper_bound(ChatRequest(model="m", messages=[{"role": "user", "content": [text, *parts]}]))

    plain = bound()
    image = {"type": "image_url", "image_url": {"url": "https://example.com/scan.png"}}
    pdf = {"type": "file", "file": {"filename": "a.pdf", "file_data": "https://example.com/a.pdf"}}
    stored = {"type": "file", "file": {"file_id": "file-abc"}}
    inline = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 3000}}
    assert bound(image) - plain < URL_IMAGE_TOKENS + 30  # and its ~70 characters
    assert bound(image) - plain >= URL_IMAGE_TOKENS
    assert bound(image, image, pdf, stored) - plain >= 2 * URL_IMAGE_TOKENS + 2 * URL_MEDIA_TOKENS
    assert 1000 <= bound(inline) - plain < 1100  # its 3,000 characters, a token per three


def test_a_fusion_run_with_research_by_hand() -> None:
    out, rounds = 1000, 3 + 1  # each panelist: max_tool_calls research rounds and its answer
    judge_calls = 2 + 3  # research rounds, the analysis, and one repair
    answers = 2 * (out + OWN.per_answer)
    panelist = P + OWN.research  # offered the research tools
    # The judge reads every answer, its instructions and schema, the research tools, and (repairing) its reply.
    judge = P + answers + OWN.judge + OWN.research + out
    expected = (
        rounds * panelist * 1e-6 + rounds * out * 2e-6  # panelist a
        + rounds * panelist * 3e-6 + rounds * out * 5e-6  # panelist b
        + judge_calls * judge * 1e-5 + judge_calls * out * 3e-5
        + (P + answers + out + OWN.synthesizer) * 2e-6 + out * 4e-6  # the answers, the analysis, its instructions
    )  # fmt: skip
    assert estimate(model="fusion/lab") == pytest.approx(expected)
    # The client's own max_tokens bounds the synthesizer, not the panel.
    assert estimate(model="fusion/lab", max_tokens=10) == pytest.approx(expected - 990 * 4e-6)


def test_without_research_each_panelist_answers_once_and_fallbacks_count() -> None:
    out = 100
    answers = out + OWN.per_answer
    judge = P + answers + OWN.judge + out
    synthesizer = P + answers + out + OWN.synthesizer
    expected = (
        P * 1e-6 + out * 2e-6  # one panelist, one call
        + 2 * judge * 1e-5 + 2 * out * 3e-5  # the judge and its repair call
        + 2 * judge * 1e-5 + 2 * out * 1e-5  # its fallback may be called just the same
        + synthesizer * 2e-6 + out * 4e-6
    )  # fmt: skip
    assert estimate(model="fusion/plain") == pytest.approx(expected)
    with_fallback = {"id": "fusion", "synthesis_fallbacks": ["p/cheap"]}
    assert estimate(model="fusion/plain", plugins=[with_fallback]) == pytest.approx(
        expected + synthesizer * 1e-7 + out * 1e-7
    )


def test_the_panel_off_is_the_synthesizer_alone() -> None:
    plugin = {"id": "fusion", "enabled": False}
    assert estimate(model="fusion/lab", plugins=[plugin]) == pytest.approx(P * 2e-6 + 1000 * 4e-6)


def test_tool_mode_counts_every_outer_call() -> None:
    tool = {"type": "openrouter:fusion", "parameters": {"preset": "plain", "model": "p/judge"}}
    chat, _ = resolve(model="p/outer", tools=[tool])
    tokens = prompt_tokens_upper_bound(chat)  # the fusion tool's definition is part of the request
    out, outer_out = 100, 50
    question = tokens + outer_out  # the panel's question is written by the outer model
    answers = out + OWN.per_answer
    judge = question + answers + OWN.judge + out
    # Each outer call: the request, the fusion function offered, fusion's result, and its own earlier calls.
    per_outer_call = tokens + OWN.outer + answers + out + (MAX_OUTER_CALLS - 1) * outer_out
    expected = (
        question * 1e-6 + out * 2e-6
        + 2 * judge * 1e-5 + 2 * out * 3e-5
        + 2 * judge * 1e-5 + 2 * out * 1e-5
        + MAX_OUTER_CALLS * (per_outer_call * 1e-6 + outer_out * 1e-6)
    )  # fmt: skip
    assert estimate(model="p/outer", tools=[tool], max_tokens=outer_out) == pytest.approx(expected)
    # Without max_tokens the outer model's context window bounds each of its calls.
    wide = estimate(model="p/outer", tools=[tool])
    assert wide is not None and wide > expected


def test_pass_through_is_the_costliest_candidate_times_n() -> None:
    assert estimate(model="p/a", max_tokens=100) == pytest.approx(P * 1e-6 + 100 * 2e-6)
    assert estimate(model="p/a", models=["p/b", "p/cheap"], max_tokens=100) == pytest.approx(P * 3e-6 + 100 * 5e-6)
    assert estimate(model="p/a", max_completion_tokens=100, n=3) == pytest.approx(P * 1e-6 + 300 * 2e-6)
    assert estimate(model="p/windowed") == pytest.approx(P * 1e-6 + 8000 * 1e-6)


def test_a_prompt_counts_at_the_cache_write_price_when_it_is_dearer() -> None:
    """Any prompt may be written to the provider's cache (Anthropic's `cache_control`, automatic caching): a worst
    case at the plain prompt price would let a capped key's cache writes pass its cap."""
    chat, plan = resolve(model="c/claude", max_tokens=100)
    prices = PriceTable(
        {
            "c/claude": ModelPrice(prompt=3e-6, completion=1.5e-5, input_cache_write=3.75e-6, input_cache_read=3e-7),
            "c/unsaid": ModelPrice(prompt=2e-6, completion=1e-5),  # no write price: 1.25 times the prompt price
            "c/cheaper": ModelPrice(prompt=2e-6, completion=1e-5, input_cache_write=1e-6),  # never below the prompt
        }
    )
    by = WorstCase(chat, plan, reach_of(chat, plan), prices=prices)
    assert by.usd == pytest.approx(P * 3.75e-6 + 100 * 1.5e-5)
    for model, per_prompt_token in (("c/unsaid", 2.5e-6), ("c/cheaper", 2e-6)):
        chat, plan = resolve(model=model, max_tokens=100)
        by = WorstCase(chat, plan, reach_of(chat, plan), prices=prices)
        assert by.usd == pytest.approx(P * per_prompt_token + 100 * 1e-5)


def test_an_unbounded_estimate_says_why_and_names_the_field() -> None:
    chat, plan = resolve(model="p/a", models=["x/unpriced"], max_tokens=10)
    worst = WorstCase(chat, plan, reach_of(chat, plan), prices=PRICES)
    assert worst.estimate.usd is None
    with pytest.raises(CostLimitExceeded) as caught:
        worst.estimate.bounded(why="This key has a daily spend cap")
    assert caught.value.status_code == 402 and caught.value.code == "cost_unbounded"
    assert caught.value.param == "models[0]" and "x/unpriced" in caught.value.message

    chat, plan = resolve(model="p/a")  # priced, but nothing limits its output
    worst = WorstCase(chat, plan, reach_of(chat, plan), prices=PRICES)
    with pytest.raises(CostLimitExceeded) as caught:
        worst.estimate.bounded(why="This key has a daily spend cap")
    assert caught.value.param == "max_tokens" and "p/a" in caught.value.message

    tool = {"type": "openrouter:fusion", "parameters": {"analysis_models": ["p/a", "x/secret"]}}
    chat, plan = resolve(model="p/outer", tools=[tool], max_tokens=10)
    worst = WorstCase(chat, plan, reach_of(chat, plan), prices=PRICES)
    with pytest.raises(CostLimitExceeded) as caught:
        worst.estimate.bounded(why="This key has a daily spend cap")
    assert caught.value.param == "tools[0].parameters.analysis_models[1]"


def test_max_cost_uses_the_same_estimate() -> None:
    chat, plan = resolve(model="fusion/plain", plugins=[{"id": "fusion", "max_cost": 0.001}])
    assert plan is not None
    worst = WorstCase(chat, plan, reach_of(chat, plan), prices=PRICES)
    with pytest.raises(CostLimitExceeded) as caught:
        priced(plan, worst)
    assert caught.value.code == "max_cost_exceeded" and caught.value.param == "plugins[0].max_cost"
    chat, plan = resolve(model="fusion/plain", plugins=[{"id": "fusion", "max_cost": 1.0}])
    assert plan is not None
    worst = WorstCase(chat, plan, reach_of(chat, plan), prices=PRICES)
    assert math.isclose(priced(plan, worst).estimated_max_cost or 0, worst.estimate.usd or 1)


def test_the_priced_plan_is_a_copy_with_only_its_estimate_set() -> None:
    chat, plan = resolve(model="fusion/plain", plugins=[{"id": "fusion", "max_cost": 1.0}])
    assert plan is not None and plan.estimated_max_cost is None
    worst = WorstCase(chat, plan, reach_of(chat, plan), prices=PRICES)

    quoted = priced(plan, worst)

    assert quoted is not plan and plan.estimated_max_cost is None  # the plan it was given is left as it was
    assert quoted == plan and quoted.cost is worst and quoted.estimated_max_cost == worst.estimate.usd
    with pytest.raises(dataclasses.FrozenInstanceError):
        quoted.cost = None  # type: ignore[misc]


def test_without_max_cost_the_estimate_waits_until_something_asks_for_it() -> None:
    """Pricing reads the whole conversation: a plan without max_cost leaves it to the report (priced while the
    synthesizer's answer is awaited), not to the request's way in, before its first upstream call."""
    long = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x" * 2000} for i in range(40)]
    chat, plan = resolve(model="fusion/plain", messages=long)
    assert plan is not None and plan.max_cost is None
    worst = WorstCase(chat, plan, reach_of(chat, plan), prices=PRICES)

    quoted = priced(plan, worst)

    assert "estimate" not in vars(worst)  # not computed yet
    usd = quoted.estimated_max_cost
    assert usd is not None and usd == worst.estimate.usd and "estimate" in vars(worst)
    assert quoted.estimated_max_cost == usd  # computed once


def test_a_prompt_asking_for_one_hour_cache_writes_counts_at_the_one_hour_write_price() -> None:
    """Anthropic bills a 1-hour cache write at twice the input price: a request asking for one (`ttl: "1h"`, in a chat
    content part or in the body a native surface forwards as sent) is bounded at that price, others at a 5-minute
    write's."""
    prices = PriceTable(
        {
            "c/claude": ModelPrice(prompt=3e-6, completion=1.5e-5, input_cache_write=3.75e-6),  # 1h unset: 6e-6
            "c/priced": ModelPrice(prompt=3e-6, completion=1.5e-5, input_cache_write_1h=5e-6),
        }
    )
    part = {"type": "text", "text": QUESTION, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    for model, per_prompt_token in (("c/claude", 6e-6), ("c/priced", 5e-6)):
        chat, plan = resolve(model=model, max_tokens=100, messages=[{"role": "user", "content": [part]}])
        tokens = prompt_tokens_upper_bound(chat)
        assert WorstCase(chat, plan, reach_of(chat, plan), prices=prices).usd == pytest.approx(
            tokens * per_prompt_token + 100 * 1.5e-5
        )
    # A chat form without the field (a Messages request's), the body as sent asking for it.
    chat, plan = resolve(model="c/claude", max_tokens=100)
    sent = {"system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}
    by = WorstCase(chat, plan, reach_of(chat, plan), prices=prices, sent=sent)
    assert by.usd == pytest.approx(P * 6e-6 + 100 * 1.5e-5)
    # A 5-minute write asked for, or the text "ttl":"1h" in a message (escaped in JSON), is priced at 1.25 times.
    chat, plan = resolve(model="c/claude", max_tokens=100, messages=[{"role": "user", "content": '"ttl":"1h"'}])
    tokens = prompt_tokens_upper_bound(chat)
    five = {"system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral", "ttl": "5m"}}]}
    by = WorstCase(chat, plan, reach_of(chat, plan), prices=prices, sent=five)
    assert by.usd == pytest.approx(tokens * 3.75e-6 + 100 * 1.5e-5)


_HOUR = {"type": "ephemeral", "ttl": "1h"}


def _said(content: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}]}


def _text(**cache: Any) -> dict[str, Any]:
    return {"type": "text", "text": "Hi", **cache}


_INPUT_TEXT = {"type": "input_text", "text": "42", "cache_control": _HOUR}
_SCHEMA_NAMING_TTL = {"type": "object", "properties": {"ttl": {"default": "1h"}}}


@pytest.mark.parametrize(
    ("body", "asks"),
    [
        ({"cache_control": _HOUR, "messages": []}, True),  # the body's own (automatic caching)
        ({"system": [_text(cache_control=_HOUR)]}, True),
        ({"tools": [{"name": "f", "input_schema": {"type": "object"}, "cache_control": _HOUR}]}, True),
        ({"messages": [{"role": "user", "content": "Hi", "cache_control": _HOUR}]}, True),
        (_said([_text(cache_control=_HOUR)]), True),
        (_said([{"type": "tool_result", "tool_use_id": "t", "content": [_text(cache_control=_HOUR)]}]), True),
        (_said([_text(cache_control={"type": "ephemeral"})]), False),  # a 5-minute write
        (_said('{"cache_control": {"ttl": "1h"}}'), False),  # text, not a field
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": _SCHEMA_NAMING_TTL}}]}, False),
        ({"messages": "not a list", "system": "Be brief.", "tools": None}, False),
        # A Responses body: an input item, its content parts, a function call's output parts
        ({"input": [{"role": "user", "content": "Hi", "cache_control": _HOUR}]}, True),
        ({"input": [{"role": "user", "content": [_INPUT_TEXT]}]}, True),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": [_INPUT_TEXT]}]}, True),
        ({"input": "Hi", "instructions": "Be brief."}, False),
    ],
)
def test_a_one_hour_cache_write_is_found_where_a_provider_reads_cache_control(body: dict[str, Any], asks: bool) -> None:
    assert asks_long_cache(body) is asks


@pytest.mark.parametrize(
    ("body", "ttls"),
    [
        (_said([_text(cache_control=_HOUR)]), {"1h"}),
        ({"system": [_text(cache_control={"type": "ephemeral"})], **_said([_text(cache_control=_HOUR)])}, {"5m", "1h"}),
        (_said([_text(cache_control={"type": "ephemeral", "ttl": "5m"})]), {"5m"}),
        (_said("Hi"), set()),
    ],
    ids=["hour", "mixed", "five-minutes", "none"],
)
def test_the_cache_lifetimes_a_body_asks_for(body: dict[str, Any], ttls: set[str]) -> None:
    assert cache_ttls(body) == ttls


@pytest.mark.parametrize("estimated", [False, True], ids=["on-demand", "with-the-estimate"])
def test_a_request_asking_only_for_one_hour_cache_writes_is_told_apart(estimated: bool) -> None:
    """Every `cache_control` it holds (its chat form's, the body as sent's) asks for an hour: read with the estimate
    when one is made (its conversation then let go of), else when first asked."""

    def only_long(messages: list[dict[str, Any]], sent: dict[str, Any] | None = None) -> bool:
        chat, plan = resolve(model="p/a", max_tokens=10, messages=messages)
        worst = WorstCase(chat, plan, reach_of(chat, plan), prices=PRICES, sent=sent)
        if estimated:
            assert worst.usd is not None
        return worst.asks_only_long_cache()

    hour = [{"role": "user", "content": [_text(cache_control=_HOUR)]}]
    five = [{"role": "user", "content": [_text(cache_control={"type": "ephemeral"})]}]
    plain = [{"role": "user", "content": "Hi"}]
    assert only_long(hour) and not only_long(five) and not only_long(plain)
    assert not only_long(hour, sent={"system": [_text(cache_control={"type": "ephemeral"})]})  # mixed
    assert only_long(plain, sent={"system": [_text(cache_control=_HOUR)]})  # a native surface's body
    assert not only_long(five, sent={"system": [_text(cache_control=_HOUR)]})
    assert not only_long([{"role": "user", "content": '"ttl":"1h"'}])  # text, not a field


def test_every_research_tool_call_counts_as_a_paid_search() -> None:
    """A paid search backend bills per query: each panelist and each researching judge may search `max_tool_calls`
    times, which the worst case counts at the most one search costs."""
    chat, plan = resolve(model="fusion/lab")
    assert plan is not None
    base = WorstCase(chat, plan, reach_of(chat, plan), prices=PRICES).usd
    searched = WorstCase(chat, plan, reach_of(chat, plan), prices=PRICES, search_price=0.01).usd
    assert base is not None and searched is not None
    assert searched - base == pytest.approx((2 + 1) * 3 * 0.01)  # two panelists and the judge, 3 calls each
    chat, plan = resolve(model="fusion/lab", plugins=[{"id": "fusion", "judge_tools": False}])
    assert plan is not None
    searched = WorstCase(chat, plan, reach_of(chat, plan), prices=PRICES, search_price=0.01).usd
    base = WorstCase(chat, plan, reach_of(chat, plan), prices=PRICES).usd
    assert searched is not None and base is not None and searched - base == pytest.approx(2 * 3 * 0.01)
    for body in ({"model": "fusion/plain"}, {"model": "p/a", "max_tokens": 10}):  # no research; a pass-through
        chat, plan = resolve(**body)
        assert WorstCase(chat, plan, reach_of(chat, plan), prices=PRICES, search_price=0.01).usd == (
            WorstCase(chat, plan, reach_of(chat, plan), prices=PRICES).usd
        )
