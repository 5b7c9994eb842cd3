"""The one orchestrator: panel, then judge, then synthesizer, reported as a stream of events."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from openfusion.errors import FusionFailed
from openfusion.pipeline.analysis import Analysis
from openfusion.pipeline.citations import merge_sources, url_citations
from openfusion.pipeline.deferred import Deferred
from openfusion.pipeline.events import (
    Event,
    JudgeOutcome,
    JudgeStarted,
    PanelAnswer,
    PanelDeadline,
    PanelDelta,
    PanelFailure,
    PanelistDone,
    PanelStarted,
    RunContent,
    RunFinished,
    SynthesisChunk,
    SynthesisMessage,
    SynthesisStarted,
)
from openfusion.pipeline.judge import analyse, judge_answers
from openfusion.pipeline.panel import collect_answers, panel_labels
from openfusion.pipeline.plan import FusionPlan
from openfusion.pipeline.prepared import PreparedPrompts
from openfusion.pipeline.prompts import Messages, synthesis_messages
from openfusion.pipeline.report import StagesReport, fusion_report, stages_report
from openfusion.pipeline.research import NO_RESEARCH, ResearchPlan
from openfusion.pipeline.structured import DialectMemory
from openfusion.pipeline.synthesize import MessageAccumulator, SynthesisStream, synthesis_body
from openfusion.pipeline.turns import Turns, flatten_tool_messages, is_agent_step, panel_settings, turn_key
from openfusion.protocol import ChatRequest
from openfusion.upstream.client import UpstreamClient
from openfusion.upstream.trace import current_trace, role
from openfusion.upstream.web import WebResearch

# A stage before the synthesis (the panel, the judge): its events, from a generator made as it starts.
Stage = Callable[[], AsyncIterator[Event]]


class FusionRun:
    """One fusion request's state as it moves through its stages."""

    def __init__(
        self,
        *,
        upstream: UpstreamClient,
        plan: FusionPlan,
        request: ChatRequest,
        dialects: DialectMemory,
        research: WebResearch | None,
        turns: Turns | None = None,
        panel_deltas: bool = False,
        keep_content: bool = True,
    ) -> None:
        self.upstream = upstream
        # Whether the summary carries what the panel and judge said (`RunContent`): only a store that keeps content
        # needs it. Without it, a run lets go of the answers and the analysis once synthesis is under way.
        self.keep_content = keep_content
        self.turns = turns
        self.panel_deltas = panel_deltas  # stream the panel's text as PanelDelta events
        self.panel_source = "fresh"  # or "cached" / "skipped": an agent loop's step reusing its user turn
        self.plan = plan
        # Read until the synthesizer's request is built, then let go of (see `synthesize`).
        self.request: ChatRequest | None = request
        self.dialects = dialects
        self.conversation: Messages = request.conversation()
        # The judge's prompt, made while the panel is awaited; let go of once the synthesizer's prompt is made.
        self.prompts: PreparedPrompts | None = PreparedPrompts(self.conversation)
        self.research = ResearchPlan(research, plan.tools, plan.max_tool_calls, plan.blocked_domains)
        self.results: list[PanelAnswer | PanelFailure] = []
        self.judges: list[JudgeOutcome] = []
        self.trace = current_trace()  # the request's upstream calls: its usage and cost

    @property
    def answers(self) -> list[PanelAnswer]:
        return [r for r in self.results if isinstance(r, PanelAnswer)]

    async def panel(self) -> AsyncIterator[Event]:
        """Ask the panel; raise FusionFailed when fewer than `min_successful` answered."""
        plan = self.plan
        yield PanelStarted(list(plan.panel))
        body = {
            "messages": flatten_tool_messages(self.conversation),
            "temperature": plan.temperature,
            "reasoning": plan.reasoning,
            "max_completion_tokens": plan.max_completion_tokens,
        }
        panel = collect_answers(
            self.upstream,
            models=plan.panel,
            body=body,
            timeout_s=plan.panel_timeout_s,
            deadline_s=plan.panel_deadline_s,
            min_successful=plan.min_successful,
            research=self.research,
            memory=self.dialects.sampling,
            stream_deltas=self.panel_deltas,
        )
        prompts = self.prompts
        if prompts is not None:
            prompts.schedule()  # the conversation rendered for the judge once the panel's requests are out
        async with contextlib.aclosing(panel):  # leaving early closes every panel call at once
            async for result in panel:
                if isinstance(result, PanelDeadline | PanelDelta):
                    yield result
                    continue
                self.results.append(result)
                if prompts is not None and type(result) is PanelAnswer:  # while the rest of the panel is awaited
                    prompts.answer(result.label or result.model, result.content)
                yield PanelistDone(result)
        labels = panel_labels(plan.panel)
        self.results.sort(key=lambda r: labels.index(r.label))  # panel order, not arrival order
        if len(self.answers) < plan.min_successful:
            failures = [r for r in self.results if isinstance(r, PanelFailure)]
            raise panel_failed(failures, self.answers, plan.min_successful)

    def needs_panel(self) -> bool:
        """False for an agent-loop step whose user turn was already fused (or cannot be): no fan-out again. A turn
        fused under other settings (another panel, other research exclusions, reasoning...) is fused again."""
        if self.turns is None or self.plan.refire == "always" or not is_agent_step(self.conversation):
            return True
        turn = self.turns.get(turn_key(self.conversation))
        if turn is None:
            self.panel_source = "skipped"
        elif turn.settings != panel_settings(self.plan):
            return True
        else:
            self.panel_source = "cached"
            self.results, self.judges = list(turn.answers), list(turn.judges)
        return False

    def remember_turn(self, conversation: Messages) -> None:
        """Keep this turn's analysis for the agent-loop steps that follow it (`conversation`: the request's)."""
        if self.turns is not None and self.panel_source == "fresh" and self.answers:
            self.turns.put(turn_key(conversation), self.answers, self.judges, settings=panel_settings(self.plan))

    async def judge(self) -> AsyncIterator[Event]:
        """The judge, then its fallbacks until one produces an analysis (none may: that degrades)."""
        try:
            for attempt, model in enumerate(self.plan.judges, start=1):
                yield JudgeStarted(model, attempt)
                if self.prompts is not None:
                    self.prompts.judge_asked()  # the synthesizer's copy of the conversation made in the judge's wait
                with role("judge"):
                    outcome = await self._analyse(model)
                self.judges.append(outcome)
                yield outcome
                if outcome.ok:
                    return
        finally:
            if self.prompts is not None:
                self.prompts.judged()

    async def _analyse(self, model: str) -> JudgeOutcome:
        answers = self.answers
        prompt = None
        if self.prompts is not None:
            prompt = self.prompts.judge_messages(judge_answers(answers), self.conversation)
        return await analyse(
            self.upstream,
            model=model,
            conversation=self.conversation,
            answers=answers,
            reasoning=self.plan.reasoning,
            max_completion_tokens=self.plan.max_completion_tokens,
            timeout_s=self.plan.judge_timeout_s,
            dialects=self.dialects,
            research=self.research if self.plan.judge_tools else NO_RESEARCH,
            prompt=prompt,
        )

    def sources(self) -> list[Any]:
        logs = [a.research for a in self.answers] + [j.research for j in self.judges]
        return merge_sources(log.sources for log in logs)

    async def synthesize(self, *, stream: bool, stages: Sequence[Stage] = ()) -> AsyncIterator[Event]:
        """The final answer: relayed chunk by chunk, or as one message; then the run's summary.

        `stages` (the panel, the judge) go first, relayed from this same generator: a generator of the whole run's
        above this one would be resumed for every token of the answer (~1.2 k instructions a level).
        """
        for stage in stages:
            # Each stage's generator made as the stage starts, and let go of as it ends: a stream held open for
            # minutes does not keep its finished stages.
            async with contextlib.aclosing(stage()) as events:  # an abandoned run closes the stage's calls at once
                async for event in events:
                    yield event
                    # Not held by this frame past its relay: the judge stage's last event is its outcome (the
                    # analysis, what its research read), which the answer's minutes of streaming have no use for.
                    del event
            del events
        sources = self.sources()  # fixed once the panel and judge are done
        conversation = self.conversation
        prompts, self.prompts = self.prompts, None
        answers: list[tuple[str, str]] = []
        if self.plan.enabled and self.panel_source != "skipped":
            answers = [(a.label, a.content) for a in self.answers]
            messages = synthesis_messages(
                conversation=conversation,
                analysis=self.analysis(),
                answers=answers,
                sources=[(s.url, s.title) for s in sources],
                # the judge's prompt rendered these answers already (a reused turn's were never rendered)
                rendered_answers=prompts.responses_text(answers) if prompts is not None else None,
            )
            if prompts is not None:
                messages = prompts.synthesis_messages(messages)
        else:
            messages = conversation
        del prompts, answers  # not held by this frame while the answer streams
        request, self.request = self.request, None
        assert request is not None, "a run synthesizes once"
        synthesis = SynthesisStream(
            self.upstream,
            models=self.plan.synthesizers,
            body=synthesis_body(request, self.plan, messages),
            timeout_s=self.plan.synth_timeout_s,
            client_streams=stream,
            memory=self.dialects.sampling,
        )
        # From here the prompt lives only in the synthesizer's request (see SynthesisStream), and the run keeps
        # what its summary needs: a stream held open for minutes holds neither the conversation nor the request.
        del messages, request
        self.conversation = []
        # The turn kept and the summary's panel and judge parts made once the synthesizer's request is out,
        # while its answer is awaited (or when the summary needs them, if that comes first): neither sits
        # between the judge and the synthesizer, nor between the synthesizer's answer and the client.
        settled = Deferred(functools.partial(self._settle, conversation))
        del conversation
        started = time.perf_counter()
        accumulator = MessageAccumulator()
        async with synthesis:  # leaving early closes the synthesizer's stream at once; an error is its call's
            try:
                opening = synthesis.opening()
                async with contextlib.aclosing(opening):
                    async for item in opening:
                        if type(item) is SynthesisStarted:  # (not isinstance: on a chunk it would fail, with a lookup)
                            yield item
                            settled.schedule()  # the request goes out in this step, when the loop next takes `opening`
                            continue
                        accumulator.feed(item)
                        if stream:
                            yield SynthesisChunk(item)
                del opening
                # The answer's tokens, read here straight from the synthesizer's stream (no generator between).
                observe = synthesis.observe
                async for item in synthesis.rest:  # (`item` again: the first chunk is not held meanwhile)
                    if observe(item):
                        accumulator.feed(item)
                        if stream:
                            yield SynthesisChunk(item)
            finally:
                stages = settled.result()  # no synthesizer answered, or the client left: the turn is kept all the same
        message = accumulator.message()
        citations = url_citations(message.get("content") or "", sources)
        if not stream:
            if citations:
                message["annotations"] = [*message.get("annotations", []), *citations]
            yield SynthesisMessage(message, accumulator.finish_reason)
        synth_ms = round((time.perf_counter() - started) * 1000)
        # Every upstream call this request made, failed ones included; a reused turn's panel and judge were
        # paid for by an earlier request and are not among them.
        bill = self.trace.bill()
        report = fusion_report(
            self.plan, stages=stages, synthesis=synthesis, synth_ms=synth_ms, sources=sources,
            usage_complete=bill.complete,
        )  # fmt: skip
        report["panel_source"] = self.panel_source
        yield RunFinished(
            model=synthesis.reported_model or synthesis.model,
            usage=bill.usage,
            fusion=report,
            slug=synthesis.model,
            annotations=citations if stream else [],
            server_tool_use=report.get("server_tool_use_details"),
            content=RunContent(
                panel_answers=[(a.label, a.content) for a in self.answers],
                analysis=self.analysis(),
                final_answer=message.get("content"),
            ),
        )

    def _settle(self, conversation: Messages) -> StagesReport:
        """What the run can do while the synthesizer's answer is awaited: keep the turn, report the stages (with
        the plan's worst-case cost, priced there unless `max_cost` priced it before the run)."""
        self.remember_turn(conversation)
        stages = stages_report(self.plan, results=self.results, judges=self.judges, research=self.research)
        if not self.keep_content:
            # Nothing needs them past this point: a stream held open for minutes should not hold every panel
            # answer (with what its research fetched) and the analysis too. The turn kept above has its own copy.
            self.results, self.judges = [], []
        return stages

    def analysis(self) -> Analysis | None:
        """The judge's analysis, if a judge produced one."""
        return self.judges[-1].analysis if self.judges else None


def run_fusion(
    *,
    upstream: UpstreamClient,
    plan: FusionPlan,
    request: ChatRequest,
    stream: bool,
    dialects: DialectMemory | None = None,
    research: WebResearch | None = None,
    turns: Turns | None = None,
    panel_deltas: bool = False,
    keep_content: bool = True,
) -> AsyncIterator[Event]:
    """Run one fusion request: its events, as it runs. Raises FusionFailed when the panel has too few answers.

    `keep_content`: the summary (`RunFinished.content`) carries the panel's answers and the analysis; without it only
    the final answer, and the run lets go of the rest as soon as synthesis is under way.
    """
    run = FusionRun(
        upstream=upstream,
        plan=plan,
        request=request,
        dialects=dialects or DialectMemory(),
        research=research,
        turns=turns,
        panel_deltas=panel_deltas,
        keep_content=keep_content,
    )
    del request  # the run's own, let go of once its synthesizer's request is built
    stages = [run.panel, run.judge] if plan.enabled and run.needs_panel() else []
    # The whole run is the synthesis' generator (its stages relayed first): the answer's tokens cross one generator
    # fewer than under a generator of the run's own.
    return run.synthesize(stream=stream, stages=stages)


def panel_failed(failures: list[PanelFailure], answers: list[PanelAnswer], min_successful: int) -> FusionFailed:
    """The error for a panel without enough answers, coded by the most actionable cause."""
    statuses = {f.status_code for f in failures}
    if answers:
        code = "insufficient_quorum"
        what = f"only {len(answers)} of the {min_successful} answers the quorum needs arrived"
    elif 402 in statuses:
        code, what = "insufficient_credits", "a provider reported insufficient credits (402)"
    elif 429 in statuses:
        code, what = "rate_limited", "a provider rate-limited the request (429)"
    else:
        code, what = "all_panels_failed", "all panel models failed"
    details = "; ".join(_named(f) for f in failures)
    return FusionFailed(
        f"Fusion failed: {what}. {details}",
        code=code,
        failures=[_failure_entry(f) for f in failures],
    )


def _named(failure: PanelFailure) -> str:
    """`model: why`, the model named once: an upstream error's message begins with its slug already."""
    name = failure.label or failure.model
    if failure.message.startswith(failure.model):
        return name + failure.message[len(failure.model) :]
    return f"{name}: {failure.message}"


def _failure_entry(failure: PanelFailure) -> dict[str, Any]:
    entry: dict[str, Any] = {"model": failure.model, "error": failure.message}
    if failure.status_code is not None:
        entry["status_code"] = failure.status_code
    if failure.code == "timeout":
        entry["reason"] = "timeout"
    if failure.cause:
        entry["cause"] = failure.cause
    return entry
