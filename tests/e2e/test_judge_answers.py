"""What the judge sends and accepts, through the real server: answers cut off at the token limit."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from fakes.upstream import FakeUpstream, Script

from .conftest import ANALYSIS

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]
# Complete, valid JSON, but the provider says it stopped at the token limit: it cannot be trusted as whole.
CUT = Script(content=json.dumps(ANALYSIS), finish_reason="length")


def fusion(url: str, *, stream: bool = False, **plugin: Any) -> dict[str, Any]:
    """The `fusion` object of a run (expose on, so the analysis shows)."""
    body = {"model": "fusion/trio", "messages": HI, "stream": stream,
            "plugins": [{"id": "fusion", "expose": True, **plugin}]}  # fmt: skip
    response = httpx.post(f"{url}{CHAT}", json=body, timeout=30)
    assert response.status_code == 200, response.text
    if stream:
        payloads = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        return dict(payloads[-1]["fusion"])
    return dict(response.json()["fusion"])


def test_a_judge_answer_cut_at_the_token_limit_is_repaired(upstream: FakeUpstream, server: str) -> None:
    upstream.script("judge", CUT, Script(content=json.dumps(ANALYSIS)))

    report = fusion(server)

    _, repair = upstream.calls_for("judge")  # the fault happened: the first answer ended with "length"
    assert "cut off at the token limit" in repair.body["messages"][-1]["content"]
    assert repair.body["messages"][-2] == {"role": "assistant", "content": json.dumps(ANALYSIS)}
    assert report["judge"]["status"] == "ok" and report["judge"]["attempts"] == 2
    assert report["analysis"] == ANALYSIS


def test_a_judge_cut_twice_falls_back_to_the_next_judge(upstream: FakeUpstream, server: str) -> None:
    upstream.script("judge", CUT)
    upstream.script("judge2", Script(content=json.dumps(ANALYSIS)))

    report = fusion(server, judge_fallbacks=["fake/judge2"])

    assert len(upstream.calls_for("judge")) == 2 and len(upstream.calls_for("judge2")) == 1
    judge = report["judge"]
    assert judge["model"] == "fake/judge2" and judge["status"] == "ok"
    assert judge["fallbacks"] == [
        {"model": "fake/judge", "failure_reason": "judge_truncated", "error": judge["fallbacks"][0]["error"]}
    ]
    assert "cut off at the token limit (max_completion_tokens 1000)" in judge["fallbacks"][0]["error"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_judge_chain_cut_every_time_degrades(upstream: FakeUpstream, server: str, stream: bool) -> None:
    upstream.script("judge", CUT)
    upstream.script("judge2", CUT)

    report = fusion(server, stream=stream, judge_fallbacks=["fake/judge2"])

    assert len(upstream.calls_for("judge")) == len(upstream.calls_for("judge2")) == 2
    assert report["judge"]["status"] == "error" and report["judge"]["failure_reason"] == "judge_truncated"
    assert report["analysis"] is None
    synth_prompt = upstream.calls_for("synth")[0].body["messages"][0]["content"]
    assert "<analysis>" not in synth_prompt  # the synthesizer compares the answers itself


# ---- sampling parameters a model refuses ------------------------------------------------------------


def test_a_judge_that_refuses_temperature_is_asked_without_it_from_then_on(upstream: FakeUpstream, server: str) -> None:
    upstream.script("judge", Script(content=json.dumps(ANALYSIS), reject_parameters={"temperature"}))

    first_run = fusion(server)
    second_run = fusion(server)

    calls = upstream.calls_for("judge")
    # The fault happened once: temperature 0 was refused; the same call went again without it, and the
    # next request never sent it.
    assert [c.body.get("temperature") for c in calls] == [0, None, None]
    for report in (first_run, second_run):
        assert report["judge"]["status"] == "ok" and report["analysis"] == ANALYSIS
        assert report["judge"]["unsupported_parameters"] == ["temperature"]
        assert report["judge"]["attempts"] == 1  # a step-down is not a repair


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_panelist_and_a_synthesizer_that_refuse_sampling_still_answer(
    upstream: FakeUpstream, server: str, stream: bool
) -> None:
    upstream.script("a", Script(content="From a.", reject_parameters={"temperature"}))
    upstream.script("synth", Script(content="Fused.", reject_parameters={"temperature", "top_p"}))
    body = {"model": "fusion/trio", "messages": HI, "stream": stream, "temperature": 0.4, "top_p": 0.9,
            "plugins": [{"id": "fusion", "temperature": 0.7}]}  # fmt: skip

    response = httpx.post(f"{server}{CHAT}", json=body, timeout=30)

    assert response.status_code == 200, response.text
    if stream:
        payloads = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p["choices"])
        report = payloads[-1]["fusion"]
    else:
        text, report = response.json()["choices"][0]["message"]["content"], response.json()["fusion"]
    assert text == "Fused."
    assert [c.body.get("temperature") for c in upstream.calls_for("a")] == [0.7, None]
    assert report["panel"][0]["status"] == "ok" and report["panel"][0]["unsupported_parameters"] == ["temperature"]
    assert "unsupported_parameters" not in report["panel"][1]
    sent = [(c.body.get("temperature"), c.body.get("top_p")) for c in upstream.calls_for("synth")]
    assert sent == [(0.4, 0.9), (None, 0.9), (None, None)]  # one refusal at a time, each stepped down
    assert report["synthesizer"]["unsupported_parameters"] == ["temperature", "top_p"]
