"""Before a request spends anything: its worst-case cost, the `max_cost` check, and a bound a spend cap can hold.

The estimate covers every model the request can call (`pipeline.reach`): a pass-through's model
or the costliest of its `models` fallbacks (only one of them answers; one that fails is refused
with an error, which providers do not bill), and in fusion the panel with its research rounds,
every judge (each with one repair call), every synthesizer, and in tool mode the caller's own
model, called up to MAX_OUTER_CALLS times. Each call's prompt counts openfusion's own text in it too
(`ServerText`): instructions, the analysis schema, tool definitions. Each prompt token counts at the
higher of the model's prompt and cache-write prices: any prompt may be written to the provider's cache
(for an hour, at the dearer 1-hour price, when the request asks for `ttl: "1h"` anywhere). Every research
tool call a panelist or judge may make counts as a search at the search backend's price. A model named
with `:online` has no estimate: its web search is billed per call apart from tokens (`variants`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from openfusion.activity.cost import PriceTable
from openfusion.errors import CostLimitExceeded
from openfusion.pipeline.analysis import RESPONSE_FORMAT
from openfusion.pipeline.plan import FusionPlan
from openfusion.pipeline.prompts import judge_messages, render_responses
from openfusion.pipeline.prompts import prompt as prompt_file
from openfusion.pipeline.reach import ModelUse, Reach
from openfusion.pipeline.tool_mode import MAX_OUTER_CALLS, fusion_function
from openfusion.protocol import ChatRequest, round_usd
from openfusion.upstream.web.tools import WEB_SEARCH, tool_definitions
from openfusion.variants import read_variant

# Tokens per character of JSON, rounded up: English prose runs about 1 token per 4 characters, so
# 1 per 3 over-counts, which is the right side to err on for a worst case.
_CHARS_PER_TOKEN = 3
# How many times a judge may be called without research: once, plus one repair call when its JSON is invalid.
JUDGE_CALLS = 2


# Media the provider fetches itself (a URL, a file id) costs far more than its reference's few characters. An
# image is billed by its size, up to about 1,600 tokens at the large providers (OpenAI, Anthropic, Gemini): 6,000
# leaves room. A document, audio or video is billed by its pages or length, which nothing here knows: 100,000 makes
# a spend cap hold for all but the largest, and reservations are settled to the real cost once the answer is in.
URL_IMAGE_TOKENS = 6_000
URL_MEDIA_TOKENS = 100_000


@dataclass(frozen=True)
class PromptSize:
    """What the request puts in a prompt: its tokens (generously), and whether it asks for 1-hour cache writes."""

    tokens: int
    long_cache: bool
    # The cache lifetimes it asks for (`cache_ttls`), when looked for: None when its JSON holds no 1-hour one.
    ttls: frozenset[str] | None = None


def prompt_size(request: ChatRequest) -> PromptSize:
    """A generous estimate, in tokens, of what the request puts in a prompt: its messages and tools, its
    `response_format` schema and every field openfusion does not know (legacy `functions`, a `prediction`...: a
    provider may read them as prompt, and pass-through sends them), and an allowance for each piece of media given by
    reference rather than in the body; and whether any of it asks for a 1-hour cache write."""
    parts = _prompt_parts(request)
    dumped = orjson.dumps(parts)
    tokens = math.ceil(len(dumped) / _CHARS_PER_TOKEN) + _referenced_media_tokens(parts["messages"])
    # The walk costs ~3,000 instructions a message; the search of the JSON already at hand, a byte or so.
    ttls = cache_ttls(parts) if _LONG_CACHE in dumped else None
    return PromptSize(tokens, ttls is not None and LONG_TTL in ttls, ttls)


def _prompt_parts(request: ChatRequest) -> dict[str, Any]:
    """What of the request goes into a prompt: its messages, tools, `response_format` and the fields openfusion does
    not know."""
    parts: dict[str, Any] = {"messages": request.conversation()}
    if request.tools:
        parts["tools"] = request.tools
    if request.response_format:
        parts["response_format"] = request.response_format
    parts.update(request.model_extra or {})
    return parts


def _asks_only_long_cache(
    request: ChatRequest, sent_ttls: frozenset[str], chat_ttls: frozenset[str] | None = None
) -> bool:
    """Whether every `cache_control` of the request (its chat form's, `chat_ttls` when already read, and those of the
    body as sent, `sent_ttls`) asks for an hour, and it holds one."""
    if chat_ttls is None:
        chat_ttls = cache_ttls(_prompt_parts(request))
    return chat_ttls | sent_ttls == {LONG_TTL}


def prompt_tokens_upper_bound(request: ChatRequest) -> int:
    """The request's prompt in tokens, generously (see `prompt_size`)."""
    return prompt_size(request).tokens


# What compact JSON writes for a 1-hour `cache_control` (and for any other `"ttl": "1h"`): a body whose JSON lacks it
# asks for none.
_LONG_CACHE = b'"ttl":"1h"'


def asks_long_cache(body: Mapping[str, Any]) -> bool:
    """Whether a body (a chat request's, or a native surface's as sent) asks for a 1-hour cache write (Anthropic's
    `cache_control: {"type": "ephemeral", "ttl": "1h"}`) where a provider reads one (see `cache_ttls`)."""
    return LONG_TTL in cache_ttls(body)


# The lifetimes a cache write can ask for: Anthropic's default (no `ttl`, or "5m") and an hour.
SHORT_TTL, LONG_TTL = "5m", "1h"


def cache_ttls(body: Mapping[str, Any]) -> frozenset[str]:
    """The cache lifetimes (SHORT_TTL, LONG_TTL) a body (a chat request's, or a native surface's as sent) asks its
    cache writes for, in each `cache_control` where a provider reads one: on the body itself, a message or a Responses
    input item, a content block (a tool result's own blocks among them, a function call output's), a system block or
    a tool.

    Read where they can be, not searched for in the body's JSON: a `"ttl": "1h"` elsewhere (a tool's schema) asks for
    nothing.
    """
    found: set[str] = set()
    _note_ttl(body, found)
    _note_block_ttls(body.get("system"), found)
    _note_block_ttls(body.get("tools"), found)
    for key in ("messages", "input"):
        items = body.get(key)
        if isinstance(items, list):
            for item in items:
                if isinstance(item, dict):
                    _note_ttl(item, found)
                    _note_block_ttls(item.get("content"), found)
                    _note_block_ttls(item.get("output"), found)
    return frozenset(found)


def _note_block_ttls(blocks: Any, found: set[str]) -> None:
    if isinstance(blocks, list):
        for block in blocks:
            if isinstance(block, dict):
                _note_ttl(block, found)
                _note_block_ttls(block.get("content"), found)


def _note_ttl(holder: dict[str, Any] | Mapping[str, Any], found: set[str]) -> None:
    control = holder.get("cache_control")
    if isinstance(control, dict):
        found.add(LONG_TTL if control.get("ttl") == LONG_TTL else SHORT_TTL)


def _referenced_media_tokens(conversation: list[dict[str, Any]]) -> int:
    """The allowance for the media parts the provider fetches (data URLs are in the body, counted by length)."""
    tokens = 0
    for message in conversation:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict) or part.get("type") in (None, "text"):
                continue
            kind = part.get("type")
            inner = part.get(kind) if isinstance(kind, str) else None
            if isinstance(inner, str):
                reference = inner
            elif isinstance(inner, dict):
                reference = inner.get("url") or inner.get("file_data") or inner.get("file_id") or ""
            else:
                continue
            if isinstance(reference, str) and reference and not reference.startswith("data:"):
                tokens += URL_IMAGE_TOKENS if kind == "image_url" else URL_MEDIA_TOKENS
    return tokens


def _tokens(value: Any) -> int:
    """`value` (text, or anything JSON) in tokens, at the rate the request's own text is counted."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return math.ceil(len(text) / _CHARS_PER_TOKEN)


@dataclass(frozen=True)
class ServerText:
    """What openfusion itself adds to its calls' prompts, in tokens: its instructions, schemas and tool definitions.

    A short question would otherwise be priced as a short prompt, though the judge's instructions and schema alone
    run to a thousand tokens: many such requests under a spend cap each spent several times their reservation.
    """

    judge: int  # per judge call: its instructions and the analysis schema; a repair call's instructions too
    per_answer: int  # per panel answer, in the judge's and the synthesizer's prompts: its wrapper
    synthesizer: int  # the synthesizer's instructions (with the analysis, or the note that there is none)
    outer: int  # per outer call in tool mode: the fusion function's definition
    research: int  # per call offered research: the tool definitions and the note that the budget is spent


@functools.cache
def server_text() -> ServerText:
    """The allowances, measured once on the texts themselves (a prompt edited is a prompt re-measured)."""
    return ServerText(
        judge=_tokens(judge_messages(conversation=[], answers=[])) + _tokens(RESPONSE_FORMAT)
        + _tokens(prompt_file("judge_repair")),
        per_answer=_tokens(render_responses([("x" * 64, "")])),
        synthesizer=_tokens(prompt_file("synthesizer")) + _tokens(prompt_file("synthesizer_no_analysis")),
        outer=_tokens(fusion_function()),
        research=_tokens(list(tool_definitions(default_max_results=25).values()))
        + _tokens(prompt_file("research_budget_spent")),
    )  # fmt: skip


@dataclass(frozen=True)
class Estimate:
    """A request's worst-case cost in USD, or (None) why it cannot be bounded."""

    usd: float | None
    unpriced: tuple[ModelUse, ...] = ()  # models with no known price
    unbounded: tuple[ModelUse, ...] = ()  # models whose output nothing bounds (no max_tokens, no known limit)
    searching: tuple[ModelUse, ...] = ()  # `:online` models: a web search on every call, billed apart from tokens

    def bounded(self, *, why: str, param: str | None = None, code: str = "cost_unbounded") -> float:
        """The estimate; raises CostLimitExceeded (402) when there is none. `why` says what needs a bound."""
        if self.usd is not None:
            return self.usd
        if self.searching:  # first: no price or token limit would bound it
            names = ", ".join(sorted({use.slug for use in self.searching}))
            reason = (
                f"the provider runs a web search on every call to {names} (the `:online` variant), billed apart from "
                "tokens at a price nothing here knows. Leave out `:online`."
            )
            param = param or self.searching[0].param
        elif self.unpriced:
            names = ", ".join(sorted({use.slug for use in self.unpriced}))
            reason = f"no price is known for {names}. Add them under [pricing.models] or set pricing.refresh_from."
            param = param or self.unpriced[0].param
        else:
            names = ", ".join(sorted({use.slug for use in self.unbounded}))
            reason = f"set max_tokens: nothing else limits the output of {names} (no context length is known)."
            param = param or "max_tokens"
        raise CostLimitExceeded(
            f"{why}, but the worst-case cost of this request cannot be bounded: {reason}",
            param=param,
            code=code,
        )


# What a WorstCase is computed from: the request, its plan, its reach, the prices, a search's price, the body as sent
_Inputs = tuple[ChatRequest, FusionPlan | None, Reach, PriceTable, float, Mapping[str, Any] | None]


class WorstCase:
    """A request's worst-case cost, computed on first use (uncapped pass-through never pays for it).

    `search_price`: the most one research search costs (0 without a paid search backend). `sent`: the body as the
    client sent it, when a provider may get it so (a native surface's, whose chat form drops its `cache_control`).
    """

    def __init__(
        self,
        request: ChatRequest,
        plan: FusionPlan | None,
        reach: Reach,
        *,
        prices: PriceTable,
        search_price: float = 0.0,
        sent: Mapping[str, Any] | None = None,
    ) -> None:
        # Until the estimate is made: the plan it is part of lives as long as the run (its report reads the estimate),
        # and a stream held open for minutes should not keep the whole conversation through it.
        self._inputs: _Inputs | None = (request, plan, reach, prices, search_price, sent)
        self._only_long_cache: bool | None = None  # see `asks_only_long_cache`, read with the estimate or on demand

    @functools.cached_property
    def estimate(self) -> Estimate:
        """The estimate (computed once; the request and the rest it was made from are let go of then)."""
        assert self._inputs is not None, "inputs are let go of only once the estimate is cached"
        request, plan, reach, prices, search_price, sent = self._inputs
        size = prompt_size(request)
        sent_ttls = cache_ttls(sent) if sent is not None else frozenset()
        long_cache = size.long_cache or LONG_TTL in sent_ttls
        estimate = worst_case(request, plan, reach, prices, prompt_tokens=size.tokens,
                              long_cache=long_cache, search_price=search_price)  # fmt: skip
        if self._only_long_cache is None:  # read now, while the conversation is at hand
            self._only_long_cache = long_cache and _asks_only_long_cache(request, sent_ttls, size.ttls)
        self._inputs = None
        return estimate

    def asks_only_long_cache(self) -> bool:
        """Whether the request asks for cache writes, every one kept for an hour (`ttl: "1h"` in each `cache_control`
        it holds, in its chat form or as sent): then a write its provider reports without the 1-hour share
        (`Usage.splits_cache_writes`) is a 1-hour one.

        Read with the estimate (from what it found), else when first asked: only a call reporting such writes asks,
        so a request nothing prices pays for no walk of its conversation."""
        if self._only_long_cache is None:
            assert self._inputs is not None, "inputs are let go of only once the estimate has read this"
            request, sent = self._inputs[0], self._inputs[5]
            sent_ttls = cache_ttls(sent) if sent is not None else frozenset()
            self._only_long_cache = _asks_only_long_cache(request, sent_ttls)
        return self._only_long_cache

    @property
    def usd(self) -> float | None:
        """The estimate in USD (None: it cannot be bounded); computed on first use."""
        return self.estimate.usd


# (model, prompt tokens, completion tokens or None when unbounded), summed over all its calls
_Part = tuple[ModelUse, int, int | None]


def worst_case(
    request: ChatRequest,
    plan: FusionPlan | None,
    reach: Reach,
    prices: PriceTable,
    *,
    prompt_tokens: int,
    long_cache: bool = False,
    search_price: float = 0.0,
) -> Estimate:
    """The most this request can cost, from prices and the token limits in force.

    `prompt_tokens` bounds the request itself; `long_cache`: it asks for 1-hour cache writes; `search_price`: the most
    one research search costs. Tool results a model's research feeds back (fetched pages, search results) are not
    knowable up front and are not counted.
    """
    if plan is None:
        out = _output(request, prices)
        n = request.n if isinstance(request.n, int) and request.n > 1 else 1
        parts: list[_Part] = []
        for use in reach.models:
            limit = out(use)
            parts.append((use, prompt_tokens, None if limit is None else n * limit))
        return _priced(parts, prices, combine=max, long_cache=long_cache)
    searches = _searches(plan, reach) * search_price
    return _priced(_fusion_parts(request, plan, reach, prices, prompt_tokens), prices, combine=sum,
                   long_cache=long_cache, extra=searches)  # fmt: skip


def _searches(plan: FusionPlan, reach: Reach) -> int:
    """The most research searches a fusion run can make: each panelist's and researching judge's every tool call."""
    if WEB_SEARCH not in plan.tools:
        return 0
    judges = plan.judge_tools
    return sum(plan.max_tool_calls for use in reach.models if use.role == "panel" or (judges and use.role == "judge"))


def _output(request: ChatRequest, prices: PriceTable) -> Callable[[ModelUse], int | None]:
    """A model's output limit for one call: the request's max tokens (the larger, when it sets both: a provider honours
    one of them, and not always the newer), else its known context length."""
    given = [n for n in (request.max_completion_tokens, request.max_tokens) if isinstance(n, int) and n > 0]
    if given:
        asked = max(given)
        return lambda use: asked

    def listed(use: ModelUse) -> int | None:
        price = prices.price_of(use.slug)
        return price.max_completion_tokens if price else None

    return listed


def _fusion_parts(
    request: ChatRequest, plan: FusionPlan, reach: Reach, prices: PriceTable, prompt_tokens: int
) -> list[_Part]:
    out = plan.max_completion_tokens
    own = server_text()
    outer = next((use for use in reach.models if use.role == "outer"), None)
    outer_out = _output(request, prices)(outer) if outer else None
    # In tool mode the panel's question is what the outer model wrote, beside the request's system messages.
    question = prompt_tokens + (outer_out or 0)
    answers = len(plan.panel) * (out + own.per_answer)
    research_calls = plan.max_tool_calls + 1 if plan.tools else 1
    panel_research = own.research if plan.tools else 0
    judge_researches = bool(plan.tools and plan.judge_tools)
    judge_calls = JUDGE_CALLS + (plan.max_tool_calls if judge_researches else 0)
    # Every judge call: its instructions and schema; a repair call also reads the reply it repairs.
    judge_prompt = question + answers + own.judge + out + (own.research if judge_researches else 0)
    synth_out = request.max_completion_tokens or request.max_tokens or out
    parts: list[_Part] = []
    for use in reach.models:
        if use.role == "panel":
            parts.append((use, research_calls * (question + panel_research), research_calls * out))
        elif use.role == "judge":
            parts.append((use, judge_calls * judge_prompt, judge_calls * out))
        elif use.role == "synthesizer":
            # It reads the answers and the analysis; with the panel off, the conversation alone.
            read = prompt_tokens + answers + out + own.synthesizer if plan.panel else prompt_tokens
            parts.append((use, read, synth_out))
        elif use.role == "outer":
            if outer_out is None:
                parts.append((use, 0, None))
                continue
            # Each call reads the conversation, the fusion function, fusion's result (the answers and the
            # analysis) and the calls it made before.
            per_call = prompt_tokens + own.outer + answers + out + (MAX_OUTER_CALLS - 1) * outer_out
            parts.append((use, MAX_OUTER_CALLS * per_call, MAX_OUTER_CALLS * outer_out))
    return parts


def _priced(
    parts: list[_Part],
    prices: PriceTable,
    *,
    combine: Callable[[Iterable[float]], float],
    long_cache: bool = False,
    extra: float = 0.0,
) -> Estimate:
    """The parts' tokens priced and combined, plus `extra` (searches); unbounded when any part cannot be priced."""
    unpriced = tuple(use for use, _, _ in parts if prices.price_of(use.slug) is None)
    unbounded = tuple(use for use, _, completion in parts if completion is None)
    searching = tuple(use for use, _, _ in parts if read_variant(use.slug).web_search)
    if unpriced or unbounded or searching or not parts:
        return Estimate(None, unpriced, unbounded, searching)
    costs = []
    for use, prompt, completion in parts:
        price = prices.price_of(use.slug)
        assert price is not None and completion is not None
        costs.append(price.worst_cost(prompt_tokens=prompt, completion_tokens=completion, long_cache=long_cache))
    return Estimate(round_usd(combine(costs) + extra))


def priced(plan: FusionPlan, worst: WorstCase) -> FusionPlan:
    """The plan with its worst-case cost; raises CostLimitExceeded (402) when that is above `max_cost`.

    Without `max_cost` (and a spend cap, which `admit` checks) nothing before the run needs the estimate: it is
    priced when the report first asks (`FusionRun` asks while the synthesizer's answer is awaited). Pricing reads
    the whole conversation, so a long one would otherwise delay the first upstream call.
    """
    if plan.max_cost is not None:
        param = f"{plan.config_param}.max_cost"
        bound = worst.estimate.bounded(why="max_cost is set", param=param, code="max_cost_exceeded")
        if bound > plan.max_cost:
            raise CostLimitExceeded(
                f"The worst-case cost of this fusion request is ${bound:.4f}, above max_cost "
                f"${plan.max_cost:.4f}: nothing was sent. Lower max_tool_calls or max_completion_tokens, "
                "use a smaller panel, or raise max_cost.",
                param=param,
            )
    return plan.with_estimate(worst)
