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
from openfusion.protocol import ChatRequest, Message
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


def _conversation_dicts(root: Any, request: Any) -> list[dict[str, Any]]:
    """The dicts reachable from `root` that are the request's messages as dicts (`ChatRequest.conversation()`)."""
    texts = {message.content for message in request.messages}
    fields = {id(vars(message)) for message in request.messages}  # the models' own attribute dicts are not dumps
    return [
        o
        for o in reachable(root)
        if isinstance(o, dict) and id(o) not in fields and o.get("role") and o.get("content") in texts
    ]


@pytest.mark.parametrize("sent_as", ["dicts", "models"])
async def test_a_run_and_its_worst_case_read_one_dump_of_the_conversation(
    client: UpstreamClient, fake: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch, sent_as: str
) -> None:
    """A coding agent's conversation runs to hundreds of KB, and dumping its messages costs about what validating
    them did: the run's stages and the worst-case cost it reports read the messages as sent (plain dicts), or, for
    messages given as models, one dump of them."""
    request = ChatRequest.of({"model": "fusion/test", "messages": CONVERSATION})  # as a surface validates a body
    if sent_as == "models":
        request = ChatRequest(model=request.model, messages=list(request.messages))
    plan = make_plan()
    prices = PriceTable({slug: ModelPrice(prompt=1e-6, completion=2e-6) for slug in [*PANEL, "up/judge", "up/synth"]})
    plan = plan.with_estimate(WorstCase(request, plan, reach_of(request, plan), prices=prices))
    dumped: list[str] = []
    dump = Message.model_dump

    def counted(self: Message, **kwargs: Any) -> dict[str, Any]:
        dumped.append(self.role)
        return dump(self, **kwargs)

    monkeypatch.setattr(Message, "model_dump", counted)
    events = [event async for event in run_fusion(upstream=client, plan=plan, request=request, stream=False)]
    end = events[-1]
    assert isinstance(end, RunFinished)
    assert end.fusion["estimated_max_cost"] > 0  # priced while the synthesizer answered
    once = [message.role for message in request.messages]
    assert dumped == ([] if sent_as == "dicts" else once)
    assert fake.calls_to("a")[0].body["messages"] == CONVERSATION  # what the panel read: the conversation as sent


async def test_a_streaming_synthesis_that_settled_holds_no_dump_of_the_conversation(
    client: UpstreamClient, fake: ScriptedUpstream
) -> None:
    """The dump is shared while the stages and the worst case read it; a stream held open for minutes then holds
    the request's messages once, not twice."""
    request = make_request()
    run = FusionRun(upstream=client, plan=make_plan(), request=request, dialects=DialectMemory(), research=None)
    assert _conversation_dicts(run, request)  # the walk finds the dump while the run reads it
    synthesis = await streaming_synthesis(run)
    for _ in range(3):  # the run settles a few loop passes after the synthesizer's request went out
        await asyncio.sleep(0)
    assert _conversation_dicts(synthesis, request) == []
    await synthesis.aclose()
