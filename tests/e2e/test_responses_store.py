"""Stored responses: `previous_response_id` continues a conversation, per client key, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
from agents import Agent, OpenAIResponsesModel, Runner, set_tracing_disabled

from e2e.conftest import trio_provider
from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, Script, wait_until
from openfusion.app import create_app
from openfusion.settings import ProviderConfig, Settings

RESPONSES = "/v1/responses"
KEYS = {"ALICE_KEY": "sk-alice-secret-7d2e4f9a", "BOB_KEY": "sk-bob-secret-7d2e4f9a"}
Start = Callable[..., AbstractContextManager[str]]


@pytest.fixture(params=["sqlite", "postgres"])
def start(request: pytest.FixtureRequest, make_settings: Callable[..., Settings], tmp_path: Path) -> Start:
    """openfusion with two client keys (alice, bob) and its activity store on SQLite or PostgreSQL."""
    environ = {"FAKE_KEY": "sk-provider-secret", **KEYS}
    if request.param == "postgres":
        environ["DATABASE_URL"] = request.getfixturevalue("postgres_url")

    @contextmanager
    def run(**overrides: Any) -> Iterator[str]:
        settings = make_settings(
            keys=[{"name": "alice", "key_env": "ALICE_KEY"}, {"name": "bob", "key_env": "BOB_KEY"}],
            activity={"path": tmp_path / "activity.sqlite3", **overrides.pop("activity", {})},
            **overrides,
        )
        with serve_in_thread(create_app(settings, environ=environ)) as url:
            yield url

    def kept() -> int:
        """How many stored responses the database holds, expired or not."""
        if "DATABASE_URL" in environ:
            with psycopg.connect(environ["DATABASE_URL"]) as conn:
                return int(conn.execute("SELECT count(*) FROM stored_responses").fetchone()[0])  # type: ignore[index]
        with sqlite3.connect(tmp_path / "activity.sqlite3") as conn:
            return int(conn.execute("SELECT count(*) FROM stored_responses").fetchone()[0])

    run.kept = kept  # type: ignore[attr-defined]
    return run


def post(url: str, key: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}{RESPONSES}", json=body, headers={"Authorization": f"Bearer {KEYS[key]}"}, timeout=30)


def test_a_follow_up_continues_the_conversation(upstream: FakeUpstream, start: Start) -> None:
    upstream.script("plain", Script(content="Paris."), Script(content="About 2.1 million."))

    with start() as url:
        first = post(url, "ALICE_KEY", model="fake/plain", input="Capital of France?", instructions="Be brief.")
        assert first.status_code == 200 and first.json()["store"] is True
        with httpx.stream("POST", f"{url}{RESPONSES}", headers={"Authorization": f"Bearer {KEYS['ALICE_KEY']}"},
                          json={"model": "fake/plain", "input": "Its population?", "stream": True,
                                "previous_response_id": first.json()["id"]}, timeout=30) as second:  # fmt: skip
            events = [json.loads(line[6:]) for line in second.iter_lines() if line.startswith("data: ")]

    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["previous_response_id"] == first.json()["id"]
    # The history, then the new input; the first request's instructions are not carried over.
    assert upstream.calls_for("plain")[1].body["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Its population?"},
    ]


def test_a_follow_up_answers_a_function_call(upstream: FakeUpstream, start: Start) -> None:
    call = {"id": "call_9", "function": {"name": "lookup", "arguments": {"q": "x"}}}
    upstream.script("plain", Script(tool_calls=[call]), Script(content="Found it."))
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}

    with start() as url:
        first = post(url, "ALICE_KEY", model="fake/plain", input="Look it up.", tools=[tool]).json()
        output = {"type": "function_call_output", "call_id": "call_9", "output": "42"}
        second = post(url, "ALICE_KEY", model="fake/plain", input=[output], tools=[tool],
                      previous_response_id=first["id"])  # fmt: skip

    assert second.status_code == 200 and second.json()["output"][0]["content"][0]["text"] == "Found it."
    sent = upstream.calls_for("plain")[1].body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_9"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_9", "content": "42"}


def test_a_key_never_continues_another_keys_response(upstream: FakeUpstream, start: Start) -> None:
    upstream.script("plain", Script(content="Alice's secret plan."))

    with start() as url:
        alice = post(url, "ALICE_KEY", model="fake/plain", input="My secret plan?").json()
        stolen = post(url, "BOB_KEY", model="fake/plain", input="Repeat that.", previous_response_id=alice["id"])
        unknown = post(url, "BOB_KEY", model="fake/plain", input="x", previous_response_id="resp_" + "0" * 48)
        own = post(url, "ALICE_KEY", model="fake/plain", input="Repeat that.", previous_response_id=alice["id"])

    assert stolen.status_code == 404
    error = stolen.json()["error"]
    assert error["code"] == "previous_response_not_found" and error["param"] == "previous_response_id"
    assert error["type"] == "invalid_request_error"
    # Bob learns nothing: the same answer as for an id that never existed, and nothing went upstream.
    assert unknown.status_code == 404 and unknown.json()["error"]["message"].replace("0" * 48, "X") == (
        error["message"].replace(alice["id"].removeprefix("resp_"), "X")
    )
    assert "secret" not in stolen.text
    assert own.status_code == 200
    assert len(upstream.calls_for("plain")) == 2  # alice's two requests only


def test_a_stored_response_is_retrieved_by_its_key_only(upstream: FakeUpstream, start: Start) -> None:
    with start() as url:
        created = post(url, "ALICE_KEY", model="fake/plain", input="Hi").json()
        mine = httpx.get(f"{url}{RESPONSES}/{created['id']}", headers={"Authorization": f"Bearer {KEYS['ALICE_KEY']}"})
        theirs = httpx.get(f"{url}{RESPONSES}/{created['id']}", headers={"Authorization": f"Bearer {KEYS['BOB_KEY']}"})
        bad_id = httpx.get(f"{url}{RESPONSES}/resp_%00x", headers={"Authorization": f"Bearer {KEYS['ALICE_KEY']}"})
        bad_previous = post(url, "ALICE_KEY", model="fake/plain", input="Hi", previous_response_id="resp_\u0000")

    assert mine.status_code == 200 and mine.json() == created
    assert bad_id.status_code == 400 and bad_id.json()["error"]["param"] == "response_id"
    assert bad_previous.status_code == 400 and bad_previous.json()["error"]["param"] == "previous_response_id"
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "response_not_found"
    assert "Hi" not in theirs.text


def test_store_false_keeps_nothing(upstream: FakeUpstream, start: Start) -> None:
    with start() as url:
        first = post(url, "ALICE_KEY", model="fake/plain", input="Hi", store=False).json()
        follow_up = post(url, "ALICE_KEY", model="fake/plain", input="Again", previous_response_id=first["id"])

    assert first["store"] is False
    assert follow_up.status_code == 404


def test_without_retention_nothing_is_kept(upstream: FakeUpstream, start: Start) -> None:
    with start(activity={"response_retention_days": 0}) as url:
        first = post(url, "ALICE_KEY", model="fake/plain", input="Hi").json()
        follow_up = post(url, "ALICE_KEY", model="fake/plain", input="Again", previous_response_id=first["id"])

    assert first["store"] is False
    assert follow_up.status_code == 404 and "keeps no responses" in follow_up.json()["error"]["message"]


def test_a_lowered_retention_applies_to_the_responses_already_kept(upstream: FakeUpstream, start: Start) -> None:
    """Stored under 30 days; the server restarted with one second, then with none: the old responses stop being
    readable after the new period, and are deleted from the database (at start, and every few minutes)."""
    with start() as url:
        ids = [post(url, "ALICE_KEY", model="fake/plain", input=f"Hi {n}").json()["id"] for n in range(2)]
    assert start.kept() == 2  # type: ignore[attr-defined]

    time.sleep(1.2)
    with start(activity={"response_retention_days": 1 / 86400}) as url:
        headers = {"Authorization": f"Bearer {KEYS['ALICE_KEY']}"}
        retrieved = httpx.get(f"{url}{RESPONSES}/{ids[0]}", headers=headers, timeout=10)
        follow_up = post(url, "ALICE_KEY", model="fake/plain", input="Again", previous_response_id=ids[1])
        wait_until(lambda: start.kept() == 0, timeout=5)  # type: ignore[attr-defined]
        kept_again = post(url, "ALICE_KEY", model="fake/plain", input="New").json()
        assert start.kept() == 1  # type: ignore[attr-defined]
    assert retrieved.status_code == 404 and follow_up.status_code == 404
    assert kept_again["store"] is True

    with start(activity={"response_retention_days": 0}):  # keeps none: what was kept before goes too
        wait_until(lambda: start.kept() == 0, timeout=5)  # type: ignore[attr-defined]


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
def test_the_agents_sdk_continues_with_previous_response_id(upstream: FakeUpstream, start: Start) -> None:
    upstream.script("synth", Script(content="Blue, by Rayleigh scattering."), Script(content="Red, at sunset."))
    set_tracing_disabled(True)

    async def run(url: str) -> Any:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEYS["ALICE_KEY"], max_retries=0) as client:
            agent = Agent(name="a", model=OpenAIResponsesModel(model="fusion/trio", openai_client=client))
            first = await Runner.run(agent, "Why is the sky blue?")
            second = await Runner.run(agent, "And at sunset?", previous_response_id=first.last_response_id)
            assert first.final_output == "Blue, by Rayleigh scattering."
            return second

    with start() as url:
        second = asyncio.run(run(url))

    assert second.final_output == "Red, at sunset."
    history = upstream.calls_for("synth")[1].body["messages"]
    said = [m["content"] for m in history if m["role"] in ("user", "assistant") and isinstance(m["content"], str)]
    assert "Why is the sky blue?" in said and "Blue, by Rayleigh scattering." in said


def native_providers(base_url: str) -> list[ProviderConfig]:
    """`native/*` on a provider that speaks the Responses API itself (its answers carry the provider's ids)."""
    return [ProviderConfig(name="native", base_url=f"{base_url}/v1", api_key_env="FAKE_KEY", models=["native/*"],
                           strip_prefix=True, responses=True)]  # fmt: skip


@pytest.mark.parametrize("stream", [False, True])
def test_two_keys_given_the_same_id_by_a_provider_each_keep_their_own(
    upstream: FakeUpstream, fake_upstream: tuple[FakeUpstream, str], start: Start, stream: bool
) -> None:
    """A pass-through response's id is the provider's: a provider (or a compatible server) that gives two keys the same
    id still leaves each key its own response, for `previous_response_id` and `GET` alike."""
    same = [Script(content=said, reply_id="resp_same") for said in ("For Alice.", "For Bob.")]
    upstream.script("plain", *same, Script(content="Alice again."), Script(content="Bob again."))

    def create(url: str, key: str, said: str) -> str:
        with httpx.stream("POST", f"{url}{RESPONSES}", headers={"Authorization": f"Bearer {KEYS[key]}"}, timeout=30,
                          json={"model": "native/plain", "input": said, "stream": stream}) as response:  # fmt: skip
            body = response.read().decode()
        if not stream:
            return str(json.loads(body)["id"])
        events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
        return str(next(e["response"]["id"] for e in events if e["type"] == "response.completed"))

    with start(providers=[*native_providers(fake_upstream[1]), trio_provider(fake_upstream[1])]) as url:
        ids = [create(url, "ALICE_KEY", "Alice's question"), create(url, "BOB_KEY", "Bob's question")]
        alice_next = post(url, "ALICE_KEY", model="native/plain", input="And?", previous_response_id="resp_same")
        bob_next = post(url, "BOB_KEY", model="native/plain", input="And?", previous_response_id="resp_same")
        kept = {key: httpx.get(f"{url}{RESPONSES}/resp_same", headers={"Authorization": f"Bearer {KEYS[key]}"})
                for key in KEYS}  # fmt: skip

    assert ids == ["resp_same", "resp_same"]
    assert alice_next.status_code == 200 and bob_next.status_code == 200, (alice_next.text, bob_next.text)
    alice_sent, bob_sent = (call.body["input"] for call in upstream.calls_for("plain")[2:])
    assert [alice_sent[0]["content"], alice_sent[1]["content"][0]["text"]] == ["Alice's question", "For Alice."]
    assert [bob_sent[0]["content"], bob_sent[1]["content"][0]["text"]] == ["Bob's question", "For Bob."]
    assert kept["ALICE_KEY"].json()["output"][0]["content"][0]["text"] == "For Alice."
    assert kept["BOB_KEY"].json()["output"][0]["content"][0]["text"] == "For Bob."
    assert "Alice" not in bob_next.text + kept["BOB_KEY"].text


def test_a_key_given_an_id_again_continues_the_newer_response(
    upstream: FakeUpstream, fake_upstream: tuple[FakeUpstream, str], start: Start
) -> None:
    same = [Script(content=said, reply_id="resp_same") for said in ("Paris.", "Rome.")]
    upstream.script("plain", *same, Script(content="Yes."))

    with start(providers=[*native_providers(fake_upstream[1]), trio_provider(fake_upstream[1])]) as url:
        for question in ("Capital of France?", "Capital of Italy?"):
            assert post(url, "ALICE_KEY", model="native/plain", input=question).json()["id"] == "resp_same"
        follow_up = post(url, "ALICE_KEY", model="native/plain", input="Sure?", previous_response_id="resp_same")

    assert follow_up.status_code == 200
    sent = upstream.calls_for("plain")[2].body["input"]
    assert [sent[0]["content"], sent[1]["content"][0]["text"]] == ["Capital of Italy?", "Rome."]


def test_another_keys_response_is_refused_as_one_that_never_existed(
    upstream: FakeUpstream, fake_upstream: tuple[FakeUpstream, str], start: Start
) -> None:
    """Every way of naming a response (`GET`, `DELETE`, `previous_response_id` to a fusion, a chat or a native model,
    streamed or not) answers another key's response exactly as an id nobody made: nothing tells Bob that Alice's
    exists. (`DELETE` is no route here: 405 for every id.)"""
    missing = "resp_" + "0" * 48
    chat = ProviderConfig(name="fake", base_url=f"{fake_upstream[1]}/v1", api_key_env="FAKE_KEY", models=["fake/*"],
                          strip_prefix=True)  # fmt: skip

    def attempts(url: str, response_id: str) -> list[tuple[int, str, str]]:
        headers = {"Authorization": f"Bearer {KEYS['BOB_KEY']}"}
        answers = [
            httpx.get(f"{url}{RESPONSES}/{response_id}", headers=headers),
            httpx.delete(f"{url}{RESPONSES}/{response_id}", headers=headers),
            *(post(url, "BOB_KEY", model=model, input="Go on.", stream=stream, previous_response_id=response_id)
              for model in ("fake/plain", "fusion/trio", "native/plain") for stream in (False, True)),
        ]  # fmt: skip
        return [(a.status_code, a.headers.get("content-type", ""), a.text.replace(response_id, "ID")) for a in answers]

    with start(providers=[chat, *native_providers(fake_upstream[1])]) as url:
        alice = post(url, "ALICE_KEY", model="fake/plain", input="Hi").json()["id"]
        theirs, nobodys = attempts(url, alice), attempts(url, missing)
        own = httpx.get(f"{url}{RESPONSES}/{alice}", headers={"Authorization": f"Bearer {KEYS['ALICE_KEY']}"})

    assert own.status_code == 200
    assert theirs == nobodys
    assert [status for status, _, _ in theirs] == [404, 405] + [404] * 6
    assert len(upstream.calls) == 1  # Alice's own request only
