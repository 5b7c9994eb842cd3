"""NUL and lone surrogates against the real server and real stores: names refused, content stored, spend caps hold."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fakes.upstream import FakeUpstream, Script, wait_until
from openfusion.activity import ActivityStore, open_store
from openfusion.activity.config import ActivitySettings

from .conftest import ANALYSIS, bearer, chat_body, fake_prices

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]
CHAT = "/v1/chat/completions"
KEYS = {"TEAM_A_KEY": "sk-team-a-0123456789", "TEAM_B_KEY": "sk-team-b-0123456789"}
A, B = bearer(KEYS["TEAM_A_KEY"]), bearer(KEYS["TEAM_B_KEY"])
NUL = "\u0000"


@pytest.fixture(params=["sqlite", "postgres"])
def store_environ(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Where the server records activity: a SQLite file, or a fresh PostgreSQL schema (DATABASE_URL)."""
    if request.param == "sqlite":
        yield {"activity": {"path": str(tmp_path / "activity.sqlite3")}, "environ": {}}
    else:
        yield {"activity": {}, "environ": {"DATABASE_URL": request.getfixturevalue("postgres_url")}}


def _serve(serve: Serve, where: dict[str, Any], *, keys: list[dict[str, Any]], **activity: Any) -> Any:
    access = {"keys": keys}
    environ = {**KEYS, **where["environ"]}
    return serve(access, environ=environ, activity={**where["activity"], **activity}, pricing=fake_prices())


def _priced(upstream: FakeUpstream, *, synth: Script) -> None:
    """Every call of the trio preset reports its cost, so each fusion request has a known total."""
    for model in ("a", "b", "c"):
        upstream.script(model, Script(cost=0.01))
    upstream.script("judge", Script(content=json.dumps(ANALYSIS), cost=0.01))
    upstream.script("synth", synth)


def _read(environ: dict[str, str], activity: dict[str, Any], generation_id: str) -> Any:
    async def read() -> Any:
        store: ActivityStore = await open_store(ActivitySettings(**activity), environ)
        try:
            return await store.get(generation_id)
        finally:
            await store.close()

    return asyncio.run(read())


ATTACKS = [
    ("model", {"model": f"fusion/trio:{NUL}"}),
    ("model", {"model": "fake/a\ndata: forged"}),
    ("models[1]", {"model": "fake/a", "models": ["fake/b", f"fake/c{NUL}"]}),
    ("plugins[0].model", {"plugins": [{"id": "fusion", "model": f"fake/judge{NUL}"}]}),
    ("plugins[0].analysis_models[1]", {"plugins": [{"id": "fusion", "analysis_models": ["fake/a", f"{NUL}"]}]}),
    ("plugins[0].judge_fallbacks[0]", {"plugins": [{"id": "fusion", "judge_fallbacks": [f"fake/b{NUL}"]}]}),
    ("plugins[0].preset", {"plugins": [{"id": "fusion", "preset": f"trio{NUL}"}]}),
    (
        "tools[0].parameters.synthesis_model",
        {
            "model": "fake/a",
            "tools": [{"type": "openrouter:fusion", "parameters": {"synthesis_model": f"fake/s{NUL}"}}],
        },
    ),
    ("messages[0].name", {"messages": [{"role": "user", "content": "Hi", "name": f"bob{NUL}"}]}),
    ("tools[0].function.name", {"model": "fake/a", "tools": [{"type": "function", "function": {"name": f"f{NUL}"}}]}),
    ("tool_choice.function.name", {"model": "fake/a", "tool_choice": {"type": "function", "function": {"name": NUL}}}),
    (
        "messages[2].tool_call_id",
        {
            "model": "fake/a",
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f"}}]},
                {"role": "tool", "tool_call_id": f"c1{NUL}", "content": "42"},
            ],
        },
    ),
    (
        "messages[1].tool_calls[0].function.name",
        {
            "model": "fake/a",
            "messages": [
                {"role": "user", "content": "Hi"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": f"f{NUL}"}}],
                },
            ],
        },
    ),
    ("user", {"model": "fake/a", "user": f"u{NUL}"}),
]


def test_names_and_ids_with_nul_or_control_characters_are_refused_before_any_upstream_call(
    upstream: FakeUpstream, serve: Serve, tmp_path: Path
) -> None:
    with serve(activity={"path": str(tmp_path / "activity.sqlite3")}) as (url, _):
        for param, fields in ATTACKS:
            response = httpx.post(f"{url}{CHAT}", json={**chat_body(), **fields}, timeout=10)
            assert response.status_code == 400, (param, response.text)
            error = response.json()["error"]
            assert (error["type"], error["param"]) == ("invalid_request_error", param)
            assert "control characters" in error["message"]
        # A lone surrogate cannot even be read as JSON: refused as such.
        raw = b'{"model": "fake/\\ud800", "messages": [{"role": "user", "content": "Hi"}]}'
        response = httpx.post(f"{url}{CHAT}", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 400 and response.json()["error"]["param"] == "body"
    assert upstream.calls == []


def test_generation_ids_with_nul_are_refused_by_the_activity_routes(
    upstream: FakeUpstream, serve: Serve, store_environ: dict[str, Any]
) -> None:
    with _serve(serve, store_environ, keys=[]) as (url, _):
        for path, param in (
            ("/api/v1/generation?id=gen-1%00", "id"),
            ("/v1/activity?before=gen-1%00", "before"),
            ("/activity/gen-1%00", "generation_id"),
        ):
            response = httpx.get(f"{url}{path}")
            assert response.status_code == 400, (path, response.text)
            assert response.json()["error"]["param"] == param
        assert httpx.get(f"{url}/api/v1/generation", params={"id": "gen-unknown"}).status_code == 404


def test_a_capped_key_is_stopped_once_its_spend_is_recorded(
    upstream: FakeUpstream, serve: Serve, store_environ: dict[str, Any]
) -> None:
    # The client asks the model to echo a NUL: it reaches the final answer and the reported model name.
    _priced(upstream, synth=Script(content=f"A{NUL}B", response_model=f"fake/synth{NUL}", cost=0.01))
    keys = [{"name": "team-a", "key_env": "TEAM_A_KEY", "daily_spend_usd": 0.00001}]
    paid: list[httpx.Response] = []
    with _serve(serve, store_environ, keys=keys, store_content=True, flush_interval_s=0.05) as (url, _):
        attack = httpx.post(f"{url}{CHAT}", json=chat_body(f"fusion/trio:{NUL}"), headers=A, timeout=10)
        assert attack.status_code == 400 and attack.json()["error"]["param"] == "model"
        assert upstream.calls == []  # refused before anything was spent

        def refused() -> bool:
            response = httpx.post(f"{url}{CHAT}", json=chat_body("fusion/trio"), headers=A, timeout=20)
            if response.status_code == 200:
                paid.append(response)
                return False
            assert response.status_code == 429, response.text
            return response.json()["error"]["code"] == "spend_limited"

        wait_until(refused, timeout=15)  # once the first request's $0.05 is recorded, the key is over its cap
    assert paid, "the first request is within the cap and must be served"
    assert paid[0].json()["choices"][0]["message"]["content"] == f"A{NUL}B"  # the client's JSON is intact
    record = _read(store_environ["environ"], store_environ["activity"], paid[0].headers["x-generation-id"])
    assert record.generation.cost == pytest.approx(0.05) and record.generation.key_name == "team-a"
    assert record.generation.final_answer == "A\ufffdB" and record.generation.model == "fake/synth\ufffd"


def test_one_bad_record_never_costs_the_rest_of_its_batch(
    upstream: FakeUpstream, serve: Serve, store_environ: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    _priced(upstream, synth=Script(content=f"A{NUL}B", cost=0.01))
    # An upstream reporting a token count past BIGINT: a record that no database can store, even cleaned.
    upstream.script("huge", Script(usage={"prompt_tokens": 2**63, "completion_tokens": 1, "total_tokens": 2**63}))
    keys = [{"name": "team-a", "key_env": "TEAM_A_KEY"}, {"name": "team-b", "key_env": "TEAM_B_KEY"}]
    # One batch, written at stop (no response waits for its record, PostgreSQL's default).
    activity = {"store_content": True, "flush_interval_s": 60.0, "batch_size": 100, "record_before_end": False}
    serving = _serve(serve, store_environ, keys=keys, **activity)
    with caplog.at_level(logging.WARNING, logger="openfusion.activity"), serving as (url, app):
        nul = httpx.post(f"{url}{CHAT}", json=chat_body("fusion/trio"), headers=A, timeout=20)
        plain = httpx.post(f"{url}{CHAT}", json=chat_body("fake/a"), headers=B, timeout=10)
        huge = httpx.post(f"{url}{CHAT}", json=chat_body("fake/huge"), headers=B, timeout=10)
        assert [r.status_code for r in (nul, plain, huge)] == [200, 200, 200]
        writer = app.state.openfusion.activity
        wait_until(lambda: writer.stats.queued == 3, timeout=10)  # all three wait in one batch
    ids = {name: r.headers["x-generation-id"] for name, r in (("nul", nul), ("plain", plain), ("huge", huge))}
    environ, settings = store_environ["environ"], store_environ["activity"]
    stored_nul = _read(environ, settings, ids["nul"])
    assert stored_nul is not None and stored_nul.generation.final_answer == "A\ufffdB"
    assert stored_nul.generation.cost == pytest.approx(0.05)
    assert _read(environ, settings, ids["plain"]).generation.key_name == "team-b"
    assert _read(environ, settings, ids["huge"]) is None
    lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
    assert len(lost) == 1 and f"1 generation(s) lost ({ids['huge']})" in lost[0]


def test_responses_ids_and_names_with_nul_are_refused(
    upstream: FakeUpstream, serve: Serve, store_environ: dict[str, Any]
) -> None:
    with _serve(serve, store_environ, keys=[]) as (url, _):
        for param, body in (
            ("previous_response_id", {"model": "fake/a", "input": "Hi", "previous_response_id": f"resp_{NUL}"}),
            ("model", {"model": f"fake/a{NUL}", "input": "Hi"}),
        ):
            response = httpx.post(f"{url}/v1/responses", json=body, timeout=10)
            assert response.status_code == 400, (param, response.text)
            assert response.json()["error"]["param"] == param
    assert upstream.calls == []
