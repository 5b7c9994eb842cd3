"""The SDK calls against a scripted OpenAI-compatible server: answers, grader fallbacks, the leak guard."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, Script
from openfusion.evaluation.calls import Grader, ask, make_client
from openfusion.evaluation.dataset import read_tasks
from openfusion.evaluation.grader import VERDICT_SCHEMA, grader_messages
from openfusion.evaluation.leaks import DEFAULT_LEAKY_HOSTS, fusion_plugins
from openfusion.evaluation.records import ResultStore
from openfusion.evaluation.runner import RunSettings, run_evaluation

from .grading_fake import GradingUpstream, verdict
from .scenario import FIXTURE


class Counter:
    def __init__(self) -> None:
        self.done = 0

    def advance(self, calls: int = 1) -> None:
        self.done += calls


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeUpstream, str]]:
    fake = FakeUpstream()
    with serve_in_thread(fake.app) as url:
        yield fake, f"{url}/v1"


@pytest.fixture
def server(served: tuple[FakeUpstream, str]) -> tuple[FakeUpstream, str]:
    fake, url = served
    fake.reset()
    return fake, url


async def test_only_fusion_models_get_the_leak_guard(server: tuple[FakeUpstream, str], tmp_path: Path) -> None:
    fake, url = server
    fake.script("g", verdict("MET"))
    (task,) = [t for t in read_tasks(FIXTURE) if t.id == "med-2"]
    plugins = fusion_plugins(DEFAULT_LEAKY_HOSTS)
    settings = RunSettings(models=["fusion/budget", "x/solo"], grader="g", fusion_plugins=plugins)
    progress = Counter()

    async with make_client(base_url=url, api_key="sk-test", timeout=10, max_retries=0) as client:
        with ResultStore(tmp_path / "r.jsonl") as store:
            await run_evaluation(client, tasks=[task], settings=settings, store=store, progress=progress)

    assert fake.calls_for("fusion/budget")[0].body["plugins"] == plugins
    assert "plugins" not in fake.calls_for("x/solo")[0].body
    assert len(fake.calls_for("g")) == 2 * len(task.criteria)
    assert progress.done == 2 + 2 * len(task.criteria)


def test_the_plugin_excludes_the_hosts_from_search_and_fetch() -> None:
    (plugin,) = fusion_plugins(["huggingface.co", "arxiv.org", "huggingface.co"])

    assert plugin["id"] == "fusion"
    search, fetch = plugin["tools"]
    assert search == {
        "type": "openrouter:web_search",
        "parameters": {"excluded_domains": ["huggingface.co", "arxiv.org"]},
    }
    assert fetch == {"type": "openrouter:web_fetch", "parameters": {"blocked_domains": ["huggingface.co", "arxiv.org"]}}
    assert {"huggingface.co", "arxiv.org", "perplexity.ai"} <= set(DEFAULT_LEAKY_HOSTS)


async def test_an_answer_keeps_content_cost_usage_and_the_fusion_panel(server: tuple[FakeUpstream, str]) -> None:
    fake, url = server
    body = {
        "id": "gen-1",
        "object": "chat.completion",
        "created": 0,
        "model": "synth",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "fused"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12, "cost": 0.15},
        "fusion": {"panel": [{"model": "x/a", "status": "ok", "latency_ms": 3}, {"model": "x/b", "status": "error"}]},
    }
    fake.script("fusion/trio", Script(raw_body=json.dumps(body).encode()))

    async with make_client(base_url=url, api_key="k", timeout=10, max_retries=0) as client:
        record = await ask(client, model="fusion/trio", task_id="t", problem="q?", plugins=None, max_tokens=321)

    assert (record.content, record.error, record.cost) == ("fused", None, 0.15)
    assert record.usage == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12, "cost": 0.15}
    assert record.panel == [{"model": "x/a", "status": "ok"}, {"model": "x/b", "status": "error"}]
    sent = fake.calls_for("fusion/trio")[0].body
    assert sent["messages"] == [{"role": "user", "content": "q?"}] and sent["max_tokens"] == 321


async def test_failed_and_empty_answers_are_records_with_an_error(server: tuple[FakeUpstream, str]) -> None:
    fake, url = server
    fake.script("x/gone", Script(status=404, error_message="no such model"))
    fake.script("x/mute", Script(content="", finish_reason="length"))

    async with make_client(base_url=url, api_key="k", timeout=10, max_retries=0) as client:
        gone = await ask(client, model="x/gone", task_id="t", problem="q", plugins=None, max_tokens=None)
        mute = await ask(client, model="x/mute", task_id="t", problem="q", plugins=None, max_tokens=None)

    assert (gone.ok, gone.content, gone.error) == (False, None, "HTTP 404: no such model")
    assert (mute.ok, mute.error) == (False, "empty answer (finish_reason=length)")


def refusing(*formats: str, status: int) -> Callable[[dict[str, Any]], Script]:
    """A grader that refuses these response_format types with `status`, and answers MET otherwise."""

    def reply(body: dict[str, Any]) -> Script:
        if (body.get("response_format") or {}).get("type") in formats:
            return Script(status=status, error_message="response_format is not supported")
        return Script(content='Sure: {"criterion_status": "MET", "explanation": "yes"}')

    return reply


@pytest.mark.parametrize(
    ("refused", "status", "sent"),
    [
        # Refused once, then json_object for every call (the refusal is remembered).
        (("json_schema",), 400, ["json_schema", "json_object", "json_object"]),
        # llama-cpp-python's server answers json_schema with a 500.
        (("json_schema",), 500, ["json_schema", "json_object", "json_object"]),
        (("json_schema", "json_object"), 400, ["json_schema", "json_object", None, None]),
    ],
    ids=["400", "500", "neither"],
)
async def test_the_grader_steps_down_to_what_the_server_accepts(
    refused: tuple[str, ...], status: int, sent: list[str | None]
) -> None:
    fake = GradingUpstream(grader="g", reply=refusing(*refused, status=status))
    (task,) = [t for t in read_tasks(FIXTURE) if t.id == "med-2"]
    messages = grader_messages(criterion=task.criteria[0], problem=task.problem, answer="a")

    with serve_in_thread(fake.app) as url:
        async with make_client(base_url=f"{url}/v1", api_key="k", timeout=10, max_retries=0) as client:
            grader = Grader(client, model="g", temperature=0.0, max_tokens=64)
            first = await grader.judge(messages)
            second = await grader.judge(messages)

    assert first.verdict is not None and first.verdict.met and first.error is None
    assert second.verdict is not None and second.verdict.met
    bodies = [c.body for c in fake.calls_for("g")]
    assert [(b.get("response_format") or {}).get("type") for b in bodies] == sent
    # json_object carries the schema too: llama.cpp's server turns it into a grammar.
    objects = [b["response_format"] for b in bodies if (b.get("response_format") or {}).get("type") == "json_object"]
    assert objects and all(o["schema"] == VERDICT_SCHEMA for o in objects)
    assert all(b["temperature"] == 0 and b["max_tokens"] == 64 for b in bodies)


async def test_a_grader_that_refuses_max_tokens_gets_max_completion_tokens(server: tuple[FakeUpstream, str]) -> None:
    fake, url = server
    # OpenAI's reasoning models refuse max_tokens (400, param max_tokens) and want max_completion_tokens.
    verdict = json.dumps({"criterion_status": "MET", "explanation": "present"})
    fake.script("reasoner", Script(content=verdict, reject_parameters={"max_tokens"}))
    messages = [{"role": "user", "content": "grade"}]

    async with make_client(base_url=url, api_key="k", timeout=10, max_retries=0) as client:
        grader = Grader(client, model="reasoner", temperature=0, max_tokens=2048)
        first = await grader.judge(messages)
        second = await grader.judge(messages)

    assert first.verdict is not None and first.verdict.met and second.verdict is not None
    limits = [(c.body.get("max_tokens"), c.body.get("max_completion_tokens")) for c in fake.calls_for("reasoner")]
    # One refusal, then the other name for the rest of the run.
    assert limits == [(2048, None), (None, 2048), (None, 2048)]


async def test_grader_errors_are_failures_not_exceptions(server: tuple[FakeUpstream, str]) -> None:
    fake, url = server
    fake.script("g429", Script(status=429, error_message="slow down"))
    fake.script("g500", Script(status=500, error_message="overloaded"))
    fake.script("gprose", Script(content="It is met, I think.", cost=0.002))
    messages = [{"role": "user", "content": "grade"}]

    async with make_client(base_url=url, api_key="k", timeout=10, max_retries=0) as client:
        limited = await Grader(client, model="g429", temperature=0, max_tokens=None).judge(messages)
        down = await Grader(client, model="g500", temperature=0, max_tokens=None).judge(messages)
        prose = await Grader(client, model="gprose", temperature=0, max_tokens=None).judge(messages)

    # Neither error is about the response format: no other dialect is tried.
    assert (limited.verdict, limited.error) == (None, "HTTP 429: slow down")
    assert (down.verdict, down.error) == (None, "HTTP 500: overloaded")
    assert len(fake.calls_for("g429")) == len(fake.calls_for("g500")) == 1
    assert prose.verdict is None and prose.error is not None and "not a MET/UNMET verdict" in prose.error
    assert prose.cost == 0.002
