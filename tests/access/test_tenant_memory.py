"""What the server learns about models (sampling values they refuse, structured output they cannot do) is learnt for
the model and the client key: one client's request never changes what is sent for another's.

Against the real server under uvicorn, with a fake upstream that refuses as OpenAI does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
from fastapi import FastAPI

from fakes.upstream import FakeUpstream, Script

from .conftest import ANALYSIS, bearer, chat_body

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]
ALICE, BOB = "sk-alice-0123456789abcdef", "sk-bob-0123456789abcdef"
KEYS = {"keys": [{"name": "alice", "key_env": "ALICE_KEY"}, {"name": "bob", "key_env": "BOB_KEY"}]}
ENVIRON = {"ALICE_KEY": ALICE, "BOB_KEY": BOB}
CHAT = "/v1/chat/completions"


def ask(url: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(f"{url}{CHAT}", json=body, headers=bearer(key), timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_one_clients_out_of_range_value_never_drops_anothers(upstream: FakeUpstream, serve: Serve) -> None:
    upstream.script("synth", Script(content="Blue.", reject_above={"top_p": 1}))
    with serve(KEYS, environ=ENVIRON) as (url, _):
        alices = ask(url, ALICE, chat_body("fusion/trio", top_p=5))
        # Alice's synthesizer call went again without her top_p, and her report says so.
        assert alices["fusion"]["synthesizer"]["unsupported_parameters"] == ["top_p"]
        bobs = ask(url, BOB, chat_body("fusion/trio", top_p=0.3))
    sent = [call.body.get("top_p") for call in upstream.calls_for("synth")]
    assert sent == [5, None, 0.3]  # refused, sent again without it; Bob's own value reached the model
    assert "unsupported_parameters" not in bobs["fusion"]["synthesizer"]
    # Alice's bad value is remembered for the model: asked again, it is left out at once.
    with serve(KEYS, environ=ENVIRON) as (url, _):
        ask(url, ALICE, chat_body("fusion/trio", top_p=5))
        ask(url, ALICE, chat_body("fusion/trio", top_p=5))
    assert [call.body.get("top_p") for call in upstream.calls_for("synth")][3:] == [5, None, None]


def test_one_clients_refusal_never_drops_the_same_value_from_anothers(upstream: FakeUpstream, serve: Serve) -> None:
    """A refusal is learnt by the key whose request met it: another key sending the same value still sends it (the
    refusal may come of what the first key's request brought about), and learns it for itself on its own refusal."""
    upstream.script("synth", Script(content="Blue.", reject_above={"top_p": 1}))
    with serve(KEYS, environ=ENVIRON) as (url, _):
        ask(url, ALICE, chat_body("fusion/trio", top_p=5))
        bobs = ask(url, BOB, chat_body("fusion/trio", top_p=5))
        ask(url, BOB, chat_body("fusion/trio", top_p=5))
        ask(url, ALICE, chat_body("fusion/trio", top_p=5))
    sent = [call.body.get("top_p") for call in upstream.calls_for("synth")]
    # Alice's refused and sent again without it; Bob's went as he sent it, then he too was refused; each key's next
    # request leaves it out at once.
    assert sent == [5, None, 5, None, None, None]
    assert bobs["fusion"]["synthesizer"]["unsupported_parameters"] == ["top_p"]


def test_a_judge_one_client_chose_never_changes_how_anothers_is_asked(upstream: FakeUpstream, serve: Serve) -> None:
    """A model that cannot do `json_schema` (some behind one provider cannot) steps down for itself only."""
    upstream.script("plain", Script(content=json.dumps(ANALYSIS), reject_response_format={"json_schema"}))
    with serve(KEYS, environ=ENVIRON) as (url, _):
        ask(url, ALICE, chat_body("fusion/trio", plugins=[{"id": "fusion", "model": "fake/plain"}]))
        ask(url, BOB, chat_body("fusion/trio"))
    asked = [call.body.get("response_format", {}).get("type") for call in upstream.calls_for("plain")]
    assert asked == ["json_schema", "json_object"]  # Alice's judge stepped down
    assert [call.body["response_format"]["type"] for call in upstream.calls_for("judge")] == ["json_schema"]


def test_one_clients_reasoning_never_drops_anothers_temperature(upstream: FakeUpstream, serve: Serve) -> None:
    """A model that refuses a temperature with thinking on takes it with thinking off: what one client's reasoning
    request learns holds for reasoning requests alone, never for another client's (nor for the judge's own 0)."""
    upstream.script("synth", Script(content="Blue.", reject_with_reasoning={"temperature"}))
    upstream.script("judge", Script(content=json.dumps(ANALYSIS), reject_with_reasoning={"temperature"}))
    thinking = {"effort": "high"}
    with serve(KEYS, environ=ENVIRON) as (url, _):
        alices = ask(url, ALICE, chat_body("fusion/trio", temperature=0.5, reasoning=thinking))
        assert alices["fusion"]["synthesizer"]["unsupported_parameters"] == ["temperature"]
        bobs = ask(url, BOB, chat_body("fusion/trio", temperature=0.5))
        ask(url, ALICE, chat_body("fusion/trio", temperature=0.5, reasoning=thinking))
    synth = [(call.body.get("temperature"), call.body.get("reasoning_effort")) for call in upstream.calls_for("synth")]
    # Alice's refused, sent again without it; Bob's own value reached the model; Alice's next left out at once.
    assert synth == [(0.5, "high"), (None, "high"), (0.5, None), (None, "high")]
    assert "unsupported_parameters" not in bobs["fusion"]["synthesizer"]
    judge = [(call.body.get("temperature"), call.body.get("reasoning_effort")) for call in upstream.calls_for("judge")]
    assert judge == [(0, "high"), (None, "high"), (0, None), (None, "high")]  # Bob's judge asked at temperature 0


def test_one_clients_judge_error_never_steps_down_anothers_judge(upstream: FakeUpstream, serve: Serve) -> None:
    """A judge call that failed with words about a schema (an error a client's own request may bring about) steps
    down that client's judge alone; another client's judge is still asked for `json_schema`."""
    analysis = Script(content=json.dumps(ANALYSIS))
    upstream.script("judge", Script(status=400, error_message="Invalid schema for this request"), analysis)
    with serve(KEYS, environ=ENVIRON) as (url, _):
        alices = ask(url, ALICE, chat_body("fusion/trio"))
        bobs = ask(url, BOB, chat_body("fusion/trio"))
        alices_next = ask(url, ALICE, chat_body("fusion/trio"))
    assert alices["fusion"]["judge"]["structured_output"] == "json_object"  # the error stepped Alice's judge down
    assert bobs["fusion"]["judge"]["structured_output"] == "json_schema"  # Bob's never saw it
    assert alices_next["fusion"]["judge"]["structured_output"] == "json_object"  # Alice's memory holds for her
    asked = [call.body["response_format"]["type"] for call in upstream.calls_for("judge")]
    assert asked == ["json_schema", "json_object", "json_schema", "json_object"]
