"""Fusion as a server tool: the caller's own (outer) model decides when a question deserves a panel.

openfusion offers the outer model a `fusion` function, runs panel + judge when it is called, hands back
the result in OpenRouter's shape, and calls the outer model again until it answers. The client's own
tools are never run here: their calls go back to the client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson

from openfusion.errors import FusionFailed, UpstreamError, relayed
from openfusion.pipeline import sampling
from openfusion.pipeline.citations import merge_sources
from openfusion.pipeline.events import (
    Event,
    PanelAnswer,
    PanelFailure,
    RunContent,
    RunFinished,
    SynthesisChunk,
    SynthesisMessage,
)
from openfusion.pipeline.plan import FUSION_FUNCTION, FusionPlan
from openfusion.pipeline.prompts import Messages, message_text, prompt
from openfusion.pipeline.report import judge_entry, panel_entry, research_totals
from openfusion.pipeline.run import FusionRun
from openfusion.pipeline.structured import DialectMemory
from openfusion.pipeline.synthesize import MessageAccumulator, client_tools
from openfusion.protocol import ChatRequest, Message, Usage, parse_usage, sum_usage
from openfusion.upstream.client import UpstreamClient
from openfusion.upstream.trace import current_trace, role
from openfusion.upstream.web import WebResearch

# Outer-model calls per request: fusion runs once, so a model that keeps calling tools is cut off here.
MAX_OUTER_CALLS = 4
# Between the texts of two outer calls (say, "Let me ask the panel." and the answer), streamed or not.
TEXT_SEPARATOR = "\n\n"


def fusion_function() -> dict[str, Any]:
    """The function tool the outer model is offered."""
    return {
        "type": "function",
        "function": {
            "name": FUSION_FUNCTION,
            "description": prompt("fusion_tool"),
            "parameters": {
                "type": "object",
                "properties": {
                    "prompt": {"type": "string", "description": "The complete question for the panel."},
                },
                "required": ["prompt"],
            },
        },
    }


class ToolModeRun:
    """One request in tool mode: outer calls, at most one fusion run, the client's tool calls returned."""

    def __init__(
        self,
        *,
        upstream: UpstreamClient,
        plan: FusionPlan,
        request: ChatRequest,
        dialects: DialectMemory,
        research: WebResearch | None,
        panel_deltas: bool = False,
    ) -> None:
        self.upstream, self.plan, self.request = upstream, plan, request
        self.panel_deltas = panel_deltas
        self.dialects, self.web = dialects, research
        self.messages: Messages = list(request.conversation())  # its own list: the outer calls are added to it
        self.client = client_tools(request)
        self.outer_usages: list[Usage] = []
        self.outer_calls = 0
        self.texts: list[str] = []  # the text of each outer call that wrote any: the answer is all of it
        self.outer_dropped: list[str] = []  # sampling parameters the outer model refused, left out
        self.inner: FusionRun | None = None
        self.fusion_status: str | None = None  # "ok" | "error" once fusion ran
        self.reported_model: str | None = None
        self.trace = current_trace()  # the request's upstream calls: its usage and cost

    async def run(self, *, stream: bool) -> AsyncIterator[Event]:
        """Events for the edge: relayed outer chunks, fusion progress, the final message, the summary."""
        final: tuple[dict[str, Any], str | None] = ({"role": "assistant", "content": ""}, None)
        for step in range(MAX_OUTER_CALLS):
            last_step = step == MAX_OUTER_CALLS - 1
            outcome: list[tuple[dict[str, Any], str | None]] = []
            async for event in self._call_outer(stream=stream, last_step=last_step, into=outcome):
                yield event
            message, finish_reason = outcome[0]
            calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
            fusion_calls = [c for c in calls if _name(c) == FUSION_FUNCTION]
            client_calls = [c for c in calls if _name(c) != FUSION_FUNCTION]
            if client_calls or not fusion_calls or last_step:
                # Done: an answer, or the client's own tool calls to run (never fusion's, never here).
                final = (_without_fusion_calls(message, client_calls), _finish(finish_reason, client_calls))
                break
            self.messages.append({"role": "assistant", "content": message.get("content"), "tool_calls": fusion_calls})
            for call in fusion_calls:
                result: dict[str, Any] = {}
                async for event in self._fusion(call, into=result):
                    yield event
                self.messages.append(
                    {"role": "tool", "tool_call_id": call.get("id", ""), "content": orjson.dumps(result).decode()}
                )
        message, finish_reason = final
        # Text written before a fusion call reached a streaming client as it came: the whole answer is all of it.
        answer = TEXT_SEPARATOR.join(self.texts)
        message = {**message, "content": answer if answer or not message.get("tool_calls") else None}
        if stream:
            for chunk in _final_chunks(message, finish_reason, self.reported_model or self.plan.synthesizer):
                yield SynthesisChunk(chunk)
        else:
            yield SynthesisMessage(message, finish_reason)
        yield self._finished(message)

    async def _call_outer(
        self, *, stream: bool, last_step: bool, into: list[tuple[dict[str, Any], str | None]]
    ) -> AsyncIterator[Event]:
        """One outer call: content deltas relayed as they come; tool calls and the finish held back."""
        self.outer_calls += 1
        tools = [*(self.client["tools"] or []), fusion_function()]
        choice: Any = self.client["tool_choice"]
        if self.plan.force_tool and self.fusion_status is None:
            choice = {"type": "function", "function": {"name": FUSION_FUNCTION}}
        elif last_step or (choice == "required" and self.fusion_status is not None):
            choice = "none" if last_step else "auto"
        body = {**self._sampling(), "messages": self.messages, "tools": tools, "tool_choice": choice}
        accumulator, model, memory = MessageAccumulator(), self.plan.synthesizer, self.dialects.sampling
        with role("outer"):
            if not stream:
                try:
                    completion, dropped = await sampling.complete(self.upstream, model, body, memory=memory)
                except UpstreamError as exc:  # the caller's own model refused the caller's conversation: theirs to fix
                    raise relayed(exc) from None
                self.outer_dropped = sampling.names([*self.outer_dropped, *dropped])
                self.reported_model = completion.model
                self.outer_usages.append(completion.usage)
                self._keep_text(completion.content)
                into.append((completion.message, completion.finish_reason))
                return
            separated = not self.texts  # the answer's first text needs no separator
            async with contextlib.AsyncExitStack() as stack:
                try:
                    chunks, dropped = await sampling.open_stream(self.upstream, model, body, memory=memory, stack=stack)
                except UpstreamError as exc:  # as above: before its answer began, as a pass-through relays it
                    raise relayed(exc) from None
                self.outer_dropped = sampling.names([*self.outer_dropped, *dropped])
                async for chunk in chunks:
                    accumulator.feed(chunk)
                    self.reported_model = chunk.get("model") or self.reported_model
                    if isinstance(chunk.get("usage"), dict):
                        self.outer_usages.append(parse_usage(chunk["usage"]))
                    if (shown := _relayable(chunk)) is not None:
                        separated = separated or _prefix_text(shown, TEXT_SEPARATOR)
                        yield SynthesisChunk(shown)
        self._keep_text(str(accumulator.content))
        into.append((accumulator.message(), accumulator.finish_reason))

    def _keep_text(self, text: str) -> None:
        if text:
            self.texts.append(text)

    async def _fusion(self, call: dict[str, Any], *, into: dict[str, Any]) -> AsyncIterator[Event]:
        """Run panel + judge for the call's prompt (once per request), leaving the tool result in `into`."""
        if self.inner is not None:
            into.update(status="error", error="fusion already ran for this request; answer with its result",
                        failure_reason="fusion_invocation_capped")  # fmt: skip
            return
        question = _prompt_argument(call) or _last_user_text(self.messages)
        self.inner = FusionRun(
            upstream=self.upstream,
            plan=self.plan,
            request=ChatRequest(model=self.plan.synthesizer, messages=self._panel_messages(question)),
            dialects=self.dialects,
            research=self.web,
            panel_deltas=self.panel_deltas,
        )
        try:
            async for event in self.inner.panel():
                yield event
        except FusionFailed as exc:  # the model still answers, from what it knows
            self.fusion_status = "error"
            into.update(status="error", error=exc.message, failure_reason=exc.code)
            return
        async for event in self.inner.judge():
            yield event
        self.fusion_status = "ok"
        into.update(_tool_result(self.inner))

    def _panel_messages(self, question: str) -> list[Message]:
        """The panel sees the question, plus the outer request's system instructions (not the conversation)."""
        system = "\n\n".join(message_text(m) for m in self.messages if m.get("role") in ("system", "developer"))
        messages = [Message(role="system", content=system)] if system.strip() else []
        return [*messages, Message(role="user", content=question)]

    def _sampling(self) -> dict[str, Any]:
        given = self.request.model_dump(exclude_none=True, exclude={"messages"})  # not the whole conversation
        keys = ("temperature", "top_p", "stop", "seed", "response_format", "max_tokens", "max_completion_tokens",
                "reasoning", "parallel_tool_calls", "user")  # fmt: skip
        return {key: given[key] for key in keys if key in given}

    def _finished(self, message: dict[str, Any]) -> RunFinished:
        inner = self.inner
        results: list[PanelAnswer | PanelFailure] = inner.results if inner else []
        judges = inner.judges if inner else []
        bill = self.trace.bill()  # every upstream call of the request: outer, panel, judge, failed ones too
        logs = [r.research for r in results if isinstance(r, PanelAnswer)] + [j.research for j in judges]
        # tool_calls_executed counts fusion runs (OpenRouter's proof that fusion ran); research is counted apart.
        server_tool_use = {**research_totals(logs), "tool_calls_executed": 1 if inner else 0}
        report: dict[str, Any] = {
            "mode": "tool",
            "preset": self.plan.preset,
            "estimated_max_cost": self.plan.estimated_max_cost,
            "invoked": inner is not None,
            "status": self.fusion_status,
            "outer": {
                "model": self.plan.synthesizer,
                "calls": self.outer_calls,
                "usage": sum_usage(self.outer_usages).render(),
            },
            "usage_complete": bill.complete,
        }
        if self.outer_dropped:
            report["outer"]["unsupported_parameters"] = self.outer_dropped
        if inner is not None:
            report["panel"] = [panel_entry(r) for r in results]
            report["judge"] = judge_entry(self.plan, judges)
            if sources := inner.sources():
                report["sources"] = [{"url": s.url, "title": s.title} for s in sources]
            if self.plan.expose:
                report.update(_tool_result(inner))
        return RunFinished(
            model=self.reported_model or self.plan.synthesizer,
            usage=bill.usage,
            fusion=report,
            slug=self.plan.synthesizer,
            server_tool_use=server_tool_use,
            content=RunContent(
                panel_answers=[(a.label, a.content) for a in inner.answers] if inner else [],
                analysis=inner.analysis() if inner else None,
                final_answer=message.get("content"),
            ),
        )


def _tool_result(run: FusionRun) -> dict[str, Any]:
    """The tool result in OpenRouter's shape: status, analysis, responses, failed_models, sources."""
    result: dict[str, Any] = {"status": "ok"}
    analysis = run.analysis()
    if analysis is not None:
        result["analysis"] = analysis.model_dump()
    result["responses"] = [{"model": a.label, "content": a.content} for a in run.answers]
    failed = [r for r in run.results if isinstance(r, PanelFailure)]
    if failed:
        result["failed_models"] = [
            {"model": f.model, "error": f.message, **({"status_code": f.status_code} if f.status_code else {})}
            for f in failed
        ]
    result["sources"] = [{"url": s.url, "title": s.title} for s in merge_sources([run.sources()])]
    return result


def _name(call: dict[str, Any]) -> str:
    return str((call.get("function") or {}).get("name", ""))


def _prompt_argument(call: dict[str, Any]) -> str:
    arguments = (call.get("function") or {}).get("arguments") or "{}"
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
        value = orjson.loads(arguments).get("prompt")
        if isinstance(value, str) and value.strip():
            return value
    return ""


def _last_user_text(messages: Messages) -> str:
    return next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")


def _finish(finish_reason: str | None, client_calls: list[dict[str, Any]]) -> str | None:
    """The answer's finish: `tool_calls` only when the client's own calls come with it. A last call that called fusion
    alone (told to call no tool) had that call dropped: it ends as an answer, or clients wait for calls never sent."""
    if client_calls:
        return "tool_calls"
    return "stop" if finish_reason == "tool_calls" else finish_reason


def _without_fusion_calls(message: dict[str, Any], client_calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The message for the client: its own tool calls only, renumbered; fusion's never appear."""
    cleaned = {key: value for key, value in message.items() if key != "tool_calls"}
    if client_calls:
        cleaned["tool_calls"] = [{k: v for k, v in call.items() if k != "index"} for call in client_calls]
    return cleaned


def _relayable(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """The part of an outer chunk that can go to the client at once: text and reasoning, not tool calls."""
    choices = []
    for choice in chunk.get("choices") or []:
        delta = {k: v for k, v in (choice.get("delta") or {}).items() if k in ("role", "content", "reasoning")}
        if delta.get("content") or delta.get("reasoning"):
            choices.append({"index": choice.get("index", 0), "delta": delta, "finish_reason": None})
    return {**chunk, "choices": choices} if choices else None


def _prefix_text(chunk: dict[str, Any], prefix: str) -> bool:
    """Put `prefix` before the chunk's first text; False when it carries none (reasoning only)."""
    for choice in chunk["choices"]:
        if choice["delta"].get("content"):
            choice["delta"]["content"] = prefix + choice["delta"]["content"]
            return True
    return False


def _final_chunks(message: dict[str, Any], finish_reason: str | None, model: str) -> list[dict[str, Any]]:
    """After the last outer call: the client's tool calls (if any) in one delta, then the finish."""
    chunks = []
    if message.get("tool_calls"):
        calls = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        chunks.append(
            {"model": model, "choices": [{"index": 0, "delta": {"tool_calls": calls}, "finish_reason": None}]}
        )
    chunks.append({"model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason or "stop"}]})
    return chunks


async def run_tool_mode(
    *,
    upstream: UpstreamClient,
    plan: FusionPlan,
    request: ChatRequest,
    stream: bool,
    dialects: DialectMemory | None = None,
    research: WebResearch | None = None,
    panel_deltas: bool = False,
) -> AsyncIterator[Event]:
    """Run one tool-mode request."""
    run = ToolModeRun(
        upstream=upstream, plan=plan, request=request, dialects=dialects or DialectMemory(), research=research,
        panel_deltas=panel_deltas,
    )  # fmt: skip
    events = run.run(stream=stream)
    async with contextlib.aclosing(events):
        async for event in events:
            yield event
