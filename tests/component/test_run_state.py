"""A run inside synthesis keeps only what its summary needs: the synthesizer's prompt is not held while it streams."""

from __future__ import annotations

import asyncio
import gc
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from component.support import ScriptedUpstream
from component.test_pipeline import CONVERSATION, PANEL, make_plan, make_request
from openfusion.activity import ModelPrice, PriceTable
from openfusion.pipeline.budget import WorstCase
from openfusion.pipeline.events import Event, RunFinished, SynthesisChunk
from openfusion.pipeline.reach import reach_of
from openfusion.pipeline.run import FusionRun, run_fusion
from openfusion.pipeline.structured import DialectMemory
from openfusion.protocol import ChatRequest
from openfusion.upstream.client import UpstreamClient

# Objects that lead everywhere (module globals, classes) without belonging to one request.
_SHARED = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.CodeType)


def reachable(root: Any, limit: int = 200_000) -> Iterator[Any]:
    """Every object reachable from `root` through object references, module-level state left out."""
    seen = {id(root)}
    todo = [root]
    while todo and len(seen) < limit:
        obj = todo.pop()
        yield obj
        if isinstance(obj, str):
            continue
        for ref in gc.get_referents(obj):
            if id(ref) not in seen and not isinstance(ref, _SHARED):
                seen.add(id(ref))
                todo.append(ref)


def reachable_strings(root: Any) -> Iterator[str]:
    """Every str reachable from `root` (see `reachable`)."""
    return (obj for obj in reachable(root) if isinstance(obj, str))


async def streaming_synthesis(run: FusionRun) -> AsyncIterator[Event]:
    """The run's synthesis, past its panel and judge, with its first answer chunk taken."""
    async for _ in run.panel():
        pass
    async for _ in run.judge():
        pass
    synthesis = run.synthesize(stream=True)
    async for event in synthesis:
        if isinstance(event, SynthesisChunk):
            break
    return synthesis


async def test_a_streaming_synthesis_holds_no_copy_of_its_prompt(
    client: UpstreamClient, fake: ScriptedUpstream
) -> None:
    run = FusionRun(upstream=client, plan=make_plan(), request=make_request(), dialects=DialectMemory(), research=None)
    synthesis = await streaming_synthesis(run)
    # The synthesizer's system prompt embeds every panel answer; the answers themselves stay (the summary and the
    # activity record carry them), the prompt built from them does not, nor the run's copy of the conversation.
    prompts = [s for s in reachable_strings(synthesis) if "Answer from a." in s and s != "Answer from a."]
    assert prompts == []
    assert run.conversation == []
    rest = [event async for event in synthesis]
    assert isinstance(rest[-1], RunFinished)
    assert rest[-1].content.panel_answers == [
        (a.label, f"Answer from {name}.") for a, name in zip(run.answers, "abc", strict=True)
    ]


async def test_a_run_under_way_in_synthesis_holds_neither_its_finished_stages_nor_its_first_chunk(
    client: UpstreamClient, fake: ScriptedUpstream
) -> None:
    """A stream held open for minutes keeps what is still to come, not the panel's and judge's generators."""
    events = run_fusion(upstream=client, plan=make_plan(), request=make_request(), stream=True)
    chunks: list[SynthesisChunk] = []
    async for event in events:
        if isinstance(event, SynthesisChunk):
            chunks.append(event)
            if len(chunks) == 2:
                break
    first = chunks.pop(0).chunk
    held = list(reachable(events))
    stages = [o.ag_code.co_name for o in held if isinstance(o, types.AsyncGeneratorType)]
    assert "panel" not in stages and "judge" not in stages
    assert "synthesize" in stages  # the walk does reach the run's live stage
    assert not [o for o in held if o is first]
    await events.aclose()


@pytest.mark.parametrize("keep_content", [True, False])
async def test_a_run_without_content_lets_go_of_the_answers_and_the_analysis_once_synthesis_is_under_way(
    client: UpstreamClient, fake: ScriptedUpstream, keep_content: bool
) -> None:
    """Only a store that keeps content reads the panel's answers and the analysis from the summary: without one, a
    stream held open for minutes does not hold them (nor what the panel's research fetched)."""
    run = FusionRun(
        upstream=client, plan=make_plan(), request=make_request(), dialects=DialectMemory(), research=None,
        keep_content=keep_content,
    )  # fmt: skip
    synthesis = await streaming_synthesis(run)
    for _ in range(3):  # the run settles a few loop passes after the synthesizer's request went out
        await asyncio.sleep(0)
    held = set(reachable_strings(synthesis))
    answers = {f"Answer from {name}." for name in "abc"}
    insight = "the metro area"  # one of the analysis's strings
    if keep_content:
        assert answers <= held and insight in held
    else:
        assert not answers & held and insight not in held
    rest = [event async for event in synthesis]
    end = rest[-1]
    assert isinstance(end, RunFinished)
    assert end.content.final_answer == "The fused final answer."
    assert bool(end.content.panel_answers) is keep_content
    assert (end.content.analysis is not None) is keep_content
    assert end.fusion["judge"]["status"] == "ok"  # the report was made before they went
    assert len(end.fusion["panel"]) == 3


def _conversation_dicts(root: Any, request: ChatRequest) -> list[dict[str, Any]]:
    """The dicts reachable from `root` that hold one of the request's messages: its own, or copies of them."""
    texts = {message.get("content") for message in request.messages}
    return [o for o in reachable(root) if isinstance(o, dict) and o.get("role") and o.get("content") in texts]


def _copies(found: list[dict[str, Any]], request: ChatRequest) -> list[dict[str, Any]]:
    own = {id(message) for message in request.messages}
    return [o for o in found if id(o) not in own]


async def test_a_run_and_its_worst_case_read_the_messages_as_sent(
    client: UpstreamClient, fake: ScriptedUpstream
) -> None:
    """A coding agent's conversation runs to hundreds of KB, and copying its messages costs about what validating
    them did: the run's stages and the worst-case cost it reports read the dicts the client sent, and the request
    holds no validated copies beside them."""
    sent = [dict(message) for message in CONVERSATION]
    request = ChatRequest.of({"model": "fusion/test", "messages": sent})  # as a surface validates a body
    assert request.conversation() is sent
    plan = make_plan()
    prices = PriceTable({slug: ModelPrice(prompt=1e-6, completion=2e-6) for slug in [*PANEL, "up/judge", "up/synth"]})
    plan = plan.with_estimate(WorstCase(request, plan, reach_of(request, plan), prices=prices))
    run = FusionRun(upstream=client, plan=plan, request=request, dialects=DialectMemory(), research=None)
    assert run.conversation is sent
    found = _conversation_dicts(run, request)
    assert found and _copies(found, request) == []  # the walk finds the messages, and no copy of them
    events = [event async for event in run_fusion(upstream=client, plan=plan, request=request, stream=False)]
    end = events[-1]
    assert isinstance(end, RunFinished)
    assert end.fusion["estimated_max_cost"] > 0  # priced while the synthesizer answered
    assert fake.calls_to("a")[0].body["messages"] == CONVERSATION  # what the panel read: the conversation as sent


async def test_a_streaming_synthesis_that_settled_holds_the_conversation_once(
    client: UpstreamClient, fake: ScriptedUpstream
) -> None:
    """A stream held open for minutes holds the request's messages once: no copy made for the stages, the worst
    case or the turn key outlives them."""
    request = make_request()
    run = FusionRun(upstream=client, plan=make_plan(), request=request, dialects=DialectMemory(), research=None)
    synthesis = await streaming_synthesis(run)
    for _ in range(3):  # the run settles a few loop passes after the synthesizer's request went out
        await asyncio.sleep(0)
    assert _copies(_conversation_dicts(synthesis, request), request) == []
    await synthesis.aclose()
