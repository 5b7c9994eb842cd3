"""The cache key (what makes two requests the same) and a cached run's replay, pure."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from openfusion.cache.entry import CachedRun, CorruptEntry, dump_event, encode_run
from openfusion.cache.key import cache_key
from openfusion.pipeline.analysis import Analysis
from openfusion.pipeline.budget import Estimate
from openfusion.pipeline.events import (
    Event,
    JudgeOutcome,
    PanelAnswer,
    PanelDelta,
    PanelistDone,
    PanelStarted,
    RunFinished,
    SynthesisChunk,
    SynthesisMessage,
)
from openfusion.pipeline.plan import CachePolicy, FusionPlan
from openfusion.protocol import ChatRequest, Usage

PLAN = FusionPlan(preset="trio", panel=["fake/a", "fake/b"], judges=["fake/j"], synthesizers=["fake/s"],
                  cache=CachePolicy(ttl_s=60))  # fmt: skip
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]


def request(**fields: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "fusion/trio", "messages": QUESTION, **fields})


def test_the_key_ignores_delivery_and_the_slugs_spelling_but_not_the_tenant_or_the_question() -> None:
    key = cache_key(PLAN, request(), tenant="alice")
    assert cache_key(PLAN, request(stream=True, stream_options={"include_usage": True}), tenant="alice") == key
    assert cache_key(PLAN, request(model="fusion"), tenant="alice") == key  # the plan names the preset
    cached_longer = replace(PLAN, cache=CachePolicy(ttl_s=5), max_cost=1.0, cost=Estimate(0.5))
    assert cache_key(cached_longer, request(), tenant="alice") == key
    assert len(key) == 64 and int(key, 16) >= 0
    others = [
        cache_key(PLAN, request(), tenant="bob"),
        cache_key(PLAN, request(), tenant=""),
        cache_key(PLAN, request(messages=[{"role": "user", "content": "Why is the sea blue?"}]), tenant="alice"),
        cache_key(PLAN, request(temperature=0.2), tenant="alice"),
        cache_key(PLAN, request(tools=[{"type": "function", "function": {"name": "f"}}]), tenant="alice"),
        cache_key(PLAN, request(plugins=[{"id": "web"}]), tenant="alice"),
        cache_key(replace(PLAN, panel=["fake/a"]), request(), tenant="alice"),
        cache_key(replace(PLAN, synthesizers=["fake/t"]), request(), tenant="alice"),
        cache_key(replace(PLAN, tools=frozenset({"web_search"})), request(), tenant="alice"),
        cache_key(replace(PLAN, expose=True), request(), tenant="alice"),
    ]
    assert len({key, *others}) == len(others) + 1


def test_the_fusion_plugin_counts_through_the_plan_it_resolved_to() -> None:
    plugin = [{"id": "fusion", "cache": {"ttl_s": 5}}]
    assert cache_key(PLAN, request(plugins=plugin), tenant="") == cache_key(PLAN, request(), tenant="")


ANALYSIS = Analysis(consensus=["blue"], contradictions=[], partial_coverage=[], unique_insights=[], blind_spots=[])
CITATION = {"type": "url_citation", "url_citation": {"url": "https://example.org", "title": "E", "start_index": 0,
                                                     "end_index": 4}}  # fmt: skip


def run_events(*, streamed: bool) -> list[Event]:
    answer = PanelAnswer(model="fake/a", content="Blue.", latency_ms=12, usage=Usage(prompt_tokens=3), label="fake/a")
    head: list[Event] = [
        PanelStarted(["fake/a"]),
        PanelDelta("fake/a", "Blu"),
        PanelistDone(answer),
        JudgeOutcome(model="fake/j", latency_ms=5, analysis=ANALYSIS, attempts=1),
    ]
    usage = Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15, cost=0.25)
    if streamed:
        deltas = [{"role": "assistant", "content": part} for part in ("Rayleigh ", "scattering.")]
        chunks = [{"model": "s-1", "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        chunks.append({"model": "s-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        end = RunFinished(model="s-1", usage=usage, fusion={"preset": "trio"}, annotations=[CITATION])
        return [*head, *(SynthesisChunk(c) for c in chunks), end]
    message = {"role": "assistant", "content": "Rayleigh scattering.", "annotations": [CITATION]}
    return [*head, SynthesisMessage(message, "stop"), RunFinished(model="s-1", usage=usage, fusion={"preset": "trio"})]


def cached(*, streamed: bool) -> CachedRun:
    raw = encode_run(generation_id="gen-1", created_at=1.5, cost=0.25, streamed=streamed, flags=[],
                     events=[dump_event(e) for e in run_events(streamed=streamed)])  # fmt: skip
    return CachedRun.decode(raw)


@pytest.mark.parametrize("streamed", [True, False])
def test_a_run_is_replayed_as_it_was_with_nothing_spent(streamed: bool) -> None:
    replay = cached(streamed=streamed).replay(stream=streamed, panel_deltas=True)
    original = run_events(streamed=streamed)
    assert replay[:-1] == original[:-1]
    end = replay[-1]
    assert isinstance(end, RunFinished)
    assert end.usage == Usage(cost=0.0)
    assert end.fusion == {"preset": "trio", "cached": True,
                          "cache": {"generation_id": "gen-1", "created_at": 2, "cost_saved": 0.25}}  # fmt: skip


def test_a_streamed_run_replayed_whole_is_one_message_with_its_citations() -> None:
    replay = cached(streamed=True).replay(stream=False, panel_deltas=False)
    assert not any(isinstance(e, PanelDelta | SynthesisChunk) for e in replay)
    message = next(e for e in replay if isinstance(e, SynthesisMessage))
    assert message.message["content"] == "Rayleigh scattering." and message.finish_reason == "stop"
    assert message.message["annotations"] == [CITATION]
    assert isinstance(replay[-1], RunFinished) and replay[-1].annotations == []


def test_a_whole_run_replayed_as_a_stream_is_one_chunk_then_its_citations() -> None:
    replay = cached(streamed=False).replay(stream=True, panel_deltas=True)
    chunks = [e for e in replay if isinstance(e, SynthesisChunk)]
    assert len(chunks) == 1 and not any(isinstance(e, SynthesisMessage) for e in replay)
    choice = chunks[0].chunk["choices"][0]
    assert choice["delta"] == {"role": "assistant", "content": "Rayleigh scattering."}
    assert choice["finish_reason"] == "stop"
    assert isinstance(replay[-1], RunFinished) and replay[-1].annotations == [CITATION]


UNKNOWN_EVENT = b'{"generation_id": "g", "created_at": 1, "cost": null, "streamed": true, "flags": [], "events": [{}]}'


@pytest.mark.parametrize("raw", [b"", b"not json", b"{}", UNKNOWN_EVENT])
def test_an_unreadable_entry_is_refused(raw: bytes) -> None:
    with pytest.raises(CorruptEntry):
        CachedRun.decode(raw)
