"""The research tool loop: a panelist (or the judge) may call web_search / web_fetch within a call budget."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from openfusion.pipeline.prompts import Messages, prompt
from openfusion.protocol import Usage
from openfusion.upstream.client import Completion
from openfusion.upstream.web import FetchSlots, Source, ToolOutcome, WebResearch

log = logging.getLogger("openfusion")

# (messages, tools or None, tool_choice or None) -> one completion
Caller = Callable[[Messages, list[dict[str, Any]] | None, str | None], Awaitable[Completion]]


@dataclass
class ResearchLog:
    """What one model's research did: tool calls run, searches and fetches, the sources it read."""

    tool_calls: int = 0
    searches: int = 0
    fetches: int = 0
    sources: list[Source] = field(default_factory=list)

    def record(self, outcome: ToolOutcome) -> None:
        self.tool_calls += 1
        self.searches += outcome.kind == "search"
        self.fetches += outcome.kind == "fetch"
        self.sources.extend(source for source in outcome.sources if source not in self.sources)

    def details(self) -> dict[str, int]:
        """OpenRouter's `server_tool_use_details` (plus fetches, which it does not count separately)."""
        return {
            "tool_calls_executed": self.tool_calls,
            "web_search_requests": self.searches,
            "web_fetch_requests": self.fetches,
        }


@dataclass(frozen=True)
class ResearchPlan:
    """What research a model may do: the tools, the call budget, the domains to keep out of it.

    `fetch_slots` is the request's share of the worker's fetch client (WebResearch.fetch_slots): one plan
    serves a run's panel and judge, so together they hold no more connections than that, nor more than their
    client key's share left by its other requests; pages that trickle until their time-out cannot keep other
    requests' or other keys' research waiting.
    """

    research: WebResearch | None = None
    tools: frozenset[str] = frozenset()
    budget: int = 4
    blocked_domains: frozenset[str] = frozenset()

    @functools.cached_property
    def fetch_slots(self) -> FetchSlots | None:
        """Made at the run's first tool call: a run that researches nothing (most) never makes one."""
        return self.research.fetch_slots() if self.research is not None else None

    def offered(self) -> list[dict[str, Any]]:
        """The tool definitions a model is offered (none without research or tools)."""
        return self.research.available_tools(self.tools) if self.research is not None and self.tools else []


NO_RESEARCH = ResearchPlan()


@dataclass
class Researched:
    """A final completion after research, the usage of every step, and the log."""

    completion: Completion
    usages: list[Usage]
    log: ResearchLog


async def answer_with_research(
    call: Caller, *, messages: Messages, plan: ResearchPlan, usages: list[Usage] | None = None
) -> Researched:
    """Let the model research, running its tool calls (in parallel), until it answers or the budget is spent.

    A spent budget means one last call with the tools still listed (providers refuse tool messages
    otherwise) but `tool_choice: "none"`, after a note asking for the final answer. Each completion's
    usage is appended to `usages` as it arrives, so a caller keeps what was billed even when a later
    round fails.
    """
    offered, research = plan.offered(), plan.research
    log = ResearchLog()
    usages = [] if usages is None else usages
    if not offered:
        completion = await call(messages, None, None)
        usages.append(completion.usage)
        return Researched(completion, usages, log)
    assert research is not None
    history = messages  # the conversation as given (the caller may have it serialized already) until a round adds to it
    remaining = plan.budget
    while True:
        completion = await call(history, offered, None if remaining > 0 else "none")
        usages.append(completion.usage)
        tool_calls = [c for c in completion.message.get("tool_calls") or [] if isinstance(c, dict)]
        if remaining <= 0 or not tool_calls:
            return Researched(completion, usages, log)
        if history is messages:
            history = list(messages)
        history.append({"role": "assistant", "content": completion.message.get("content"), "tool_calls": tool_calls})
        allowed, refused = tool_calls[:remaining], tool_calls[remaining:]
        outcomes = await asyncio.gather(*(_execute(research, c, plan) for c in allowed))
        remaining -= len(allowed)
        for tool_call, outcome in zip(allowed, outcomes, strict=True):
            log.record(outcome)
            history.append({"role": "tool", "tool_call_id": tool_call.get("id", ""), "content": outcome.content})
        for tool_call in refused:
            history.append(
                {
                    "role": "tool",
                    "tool_call_id": tool_call.get("id", ""),
                    "content": "Error: the tool call budget is spent; this call was not run.",
                }
            )
        if remaining <= 0:
            history.append({"role": "user", "content": prompt("research_budget_spent")})


async def _execute(research: WebResearch, tool_call: dict[str, Any], plan: ResearchPlan) -> ToolOutcome:
    """Run one tool call; a bug in a tool becomes a tool error for the model, not a failed panelist."""
    function = tool_call.get("function") or {}
    name, arguments = str(function.get("name", "")), function.get("arguments")
    try:
        return await research.execute(
            name, arguments, blocked_domains=plan.blocked_domains, fetch_slots=plan.fetch_slots
        )
    except Exception:
        log.exception("research tool %s failed unexpectedly", name)
        return ToolOutcome(f"{name} error: the tool failed on this server.", is_error=True)
