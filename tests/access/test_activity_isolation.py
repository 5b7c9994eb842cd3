"""Whose activity a key reads: its own; an admin key every key's; without keys, everyone everything.

Against the real server with a real SQLite file and a real PostgreSQL schema, stored answers included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fakes.upstream import FakeUpstream, Script, wait_until
from openfusion.access.keys import key_digest, listed_key_name

from .conftest import bearer, chat_body

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]
ALICE, BOB, ROOT = "sk-alice-0123456789abcdef", "sk-bob-0123456789abcdef", "sk-root-0123456789abcdef"
KEYS = {
    "keys": [
        {"name": "alice", "key_env": "ALICE_KEY"},
        {"name": "bob", "key_env": "BOB_KEY"},
        {"name": "root", "key_env": "ROOT_KEY", "admin": True},
    ]
}
ENVIRON = {"ALICE_KEY": ALICE, "BOB_KEY": BOB, "ROOT_KEY": ROOT}
SECRET = "Alice's secret plan: acquire Bob's company."


@pytest.fixture(params=["sqlite", "postgres"])
def activity(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Activity settings storing answers, with the store of the parameter; yields them with `environ` extras."""
    settings: dict[str, Any] = {"store_content": True, "flush_interval_s": 0.05}
    if request.param == "sqlite":
        yield {"settings": {**settings, "path": str(tmp_path / "activity.sqlite3")}, "environ": {}}
    else:
        url = request.getfixturevalue("postgres_url")
        yield {"settings": settings, "environ": {"DATABASE_URL": url}}


def auth(key: str) -> dict[str, str]:
    return bearer(key) if key else {}


def ask(url: str, key: str, body: dict[str, Any]) -> str:
    response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=auth(key), timeout=20)
    assert response.status_code == 200, response.text
    return response.headers["x-generation-id"]


def listed(url: str, key: str, **params: str) -> list[str]:
    response = httpx.get(f"{url}/v1/activity", params=params, headers=auth(key))
    assert response.status_code == 200, response.text
    return [g["id"] for g in response.json()["data"]]


def without_id(response: httpx.Response, generation_id: str) -> tuple[int, str, str]:
    """What a client learns from a response, the id it asked about taken out."""
    body = response.text.replace(generation_id, "<id>")
    return response.status_code, response.headers.get("content-type", ""), re.sub(r"gen-[0-9A-Za-z_-]+", "<id>", body)


def test_a_key_reads_only_its_own_activity(upstream: FakeUpstream, serve: Serve, activity: dict[str, Any]) -> None:
    upstream.script("a", Script(content=SECRET))
    environ = {**ENVIRON, **activity["environ"]}
    with serve(KEYS, environ=environ, activity=activity["settings"]) as (url, _):
        alices = ask(url, ALICE, chat_body("fusion/trio"))
        bobs = ask(url, BOB, chat_body("fake/b"))
        wait_until(lambda: set(listed(url, ROOT)) == {alices, bobs}, timeout=10)

        assert listed(url, ALICE) == [alices]
        assert listed(url, BOB) == [bobs]
        detail = httpx.get(f"{url}/api/v1/generation", params={"id": alices}, headers=bearer(ALICE))
        assert detail.status_code == 200 and SECRET in detail.text

        # Bob asks for Alice's generation: exactly what he gets for one that never existed.
        missing = "gen-0000000000000000000000000"
        for path, params in (("/api/v1/generation", {"id": "{id}"}), ("/activity/{id}", {})):
            answers = []
            for generation in (alices, missing):
                query = {name: value.format(id=generation) for name, value in params.items()}
                response = httpx.get(url + path.format(id=generation), params=query, headers=bearer(BOB))
                assert response.status_code == 404
                assert SECRET not in response.text and "alice" not in response.text
                answers.append(without_id(response, generation))
            assert answers[0] == answers[1], path
        # Her id as a page cursor is as unknown to him as any other.
        cursors = [
            httpx.get(f"{url}/v1/activity", params={"before": g}, headers=bearer(BOB)) for g in (alices, missing)
        ]
        assert [c.status_code for c in cursors] == [400, 400]
        assert without_id(cursors[0], alices) == without_id(cursors[1], missing)
        page = httpx.get(f"{url}/activity", headers=bearer(BOB))
        assert page.status_code == 200 and bobs in page.text and alices not in page.text

        # The admin key reads everyone's, answers included.
        root = httpx.get(f"{url}/api/v1/generation", params={"id": alices}, headers=bearer(ROOT))
        assert root.status_code == 200 and SECRET in root.text and root.json()["data"]["key_name"] == "alice"
        assert alices in httpx.get(f"{url}/activity", headers=bearer(ROOT)).text


def test_admin_keys_from_the_environment(upstream: FakeUpstream, serve: Serve, tmp_path: Path) -> None:
    access = {"api_keys": f"{ALICE},{BOB}", "admin_keys": ROOT}
    with serve(access, activity={"path": str(tmp_path / "a.sqlite3"), "flush_interval_s": 0.05}) as (url, _):
        first, second = ask(url, ALICE, chat_body("fake/a")), ask(url, BOB, chat_body("fake/a"))
        wait_until(lambda: set(listed(url, ROOT)) == {first, second}, timeout=10)
        assert listed(url, ALICE) == [first] and listed(url, BOB) == [second]
        body = httpx.get(f"{url}/api/v1/generation", params={"id": first}, headers=bearer(ROOT)).json()
        assert body["data"]["key_name"] == listed_key_name("env", key_digest(ALICE))


def test_a_key_removed_from_the_list_leaves_its_activity_to_no_other_key(
    upstream: FakeUpstream, serve: Serve, activity: dict[str, Any]
) -> None:
    """Revoking a key the documented way (dropping it from OPENFUSION_API_KEYS and restarting) must not hand what it
    made to the key that takes its place in the list: keys listed in a variable are named by fingerprint."""
    upstream.script("a", Script(content=SECRET))
    settings, environ = activity["settings"], activity["environ"]
    with serve({"api_keys": f"{ALICE},{BOB}", "admin_keys": ROOT}, environ=environ, activity=settings) as (url, _):
        alices = ask(url, ALICE, chat_body("fake/a"))
        wait_until(lambda: listed(url, ALICE) == [alices], timeout=10)
    with serve({"api_keys": BOB, "admin_keys": ROOT}, environ=environ, activity=settings) as (url, _):
        assert alices not in listed(url, BOB)
        read = httpx.get(f"{url}/api/v1/generation", params={"id": alices}, headers=bearer(BOB))
        assert read.status_code == 404 and SECRET not in read.text
        page = httpx.get(f"{url}/activity/{alices}", headers=bearer(BOB))
        assert page.status_code == 404 and SECRET not in page.text
        assert alices in listed(url, ROOT)  # still there, for the admin key


def test_pages_of_one_key_walk_only_its_generations(upstream: FakeUpstream, serve: Serve, tmp_path: Path) -> None:
    with serve(KEYS, environ=ENVIRON, activity={"path": str(tmp_path / "a.sqlite3"), "flush_interval_s": 0.05}) as (
        url,
        _,
    ):
        mine = [ask(url, ALICE, chat_body("fake/a")) for _ in range(3)]
        for _ in range(3):
            ask(url, BOB, chat_body("fake/a"))
        wait_until(lambda: len(listed(url, ROOT)) == 6, timeout=10)
        first = httpx.get(f"{url}/v1/activity", params={"limit": 2}, headers=bearer(ALICE)).json()
        assert first["has_more"] is True and [g["id"] for g in first["data"]] == mine[::-1][:2]
        rest = listed(url, ALICE, limit="2", before=first["next_before"])
        assert rest == mine[:1]


def test_without_keys_the_server_has_one_tenant(upstream: FakeUpstream, serve: Serve, tmp_path: Path) -> None:
    with serve(activity={"path": str(tmp_path / "a.sqlite3"), "flush_interval_s": 0.05}) as (url, _):
        ids = [ask(url, "", chat_body("fake/a")) for _ in range(2)]
        wait_until(lambda: set(listed(url, "")) == set(ids), timeout=10)
        assert httpx.get(f"{url}/api/v1/generation", params={"id": ids[0]}).status_code == 200


LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
TURN = [{"role": "user", "content": "What is our churn?"}]
STEP = [
    *TURN,
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "churn=4%"},
]  # fmt: skip


def test_an_agent_loops_cached_turn_is_its_own_keys(upstream: FakeUpstream, serve: Serve) -> None:
    upstream.script("a", Script(content=SECRET))

    def slug(key: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        body = {"model": "fusion/trio", "messages": messages, "tools": [LOOKUP]}
        response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=bearer(key), timeout=20)
        assert response.status_code == 200, response.text
        return response.json()["fusion"]

    with serve(KEYS, environ=ENVIRON) as (url, _):
        assert slug(ALICE, TURN)["panel_source"] == "fresh"
        # Bob replays Alice's conversation as an agent step: her turn is not his to reuse.
        assert slug(BOB, STEP)["panel_source"] == "skipped"
        assert all(SECRET not in str(c.body) for c in upstream.calls_for("synth")[1:])
        assert slug(ALICE, STEP)["panel_source"] == "cached"
    assert len(upstream.calls_for("a")) == 1
