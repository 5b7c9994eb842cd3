"""Every billed upstream call counts, once: the response's usage and the activity record come from the same calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes.upstream import FakeUpstream, Script, wait_until

from .conftest import ANALYSIS
from .test_activity_wiring import generation

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]
BILLED = {"prompt_tokens": 900, "completion_tokens": 10, "total_tokens": 910}  # 910 tokens, $0.50
# Every other call reports 11 + 7 tokens and $0.01.
OTHERS = ("b", "c", "judge", "synth")


def price_everything_else(upstream: FakeUpstream) -> None:
    for model in OTHERS:
        content = json.dumps(ANALYSIS) if model == "judge" else None
        upstream.script(model, Script(content=content, cost=0.01))


def fusion(url: str, *, stream: bool, **plugin: Any) -> tuple[dict[str, Any], str]:
    """(the usage and fusion object the client got, the generation id)."""
    body = {"model": "fusion/trio", "messages": HI, "stream": stream, "plugins": [{"id": "fusion", **plugin}]}
    response = httpx.post(f"{url}{CHAT}", json=body, timeout=30)
    assert response.status_code == 200, response.text
    if stream:
        payloads = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        last = payloads[-1]
    else:
        last = response.json()
    return {"usage": last["usage"], "fusion": last["fusion"]}, response.headers["x-generation-id"]


def assert_record_agrees(url: str, generation_id: str, usage: dict[str, Any]) -> dict[str, Any]:
    record = generation(url, generation_id)
    assert record["tokens_prompt"] == usage["prompt_tokens"]
    assert record["tokens_completion"] == usage["completion_tokens"]
    if "cost" in usage:
        assert record["total_cost"] == pytest.approx(usage["cost"])
    else:
        assert record["total_cost"] is None
    return record


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_billed_empty_answer_counts(upstream: FakeUpstream, start_server: Any, tmp_path: Path, stream: bool) -> None:
    price_everything_else(upstream)
    upstream.script("a", Script(content="", usage=BILLED, cost=0.5))

    with start_server(activity={"path": tmp_path / "activity.sqlite3"}) as url:
        got, gid = fusion(url, stream=stream)
        assert_record_agrees(url, gid, got["usage"])

    assert len(upstream.calls_for("a")) == 1  # the fault happened: a answered, empty, and reported its usage
    failed = got["fusion"]["panel"][0]
    assert failed["status"] == "error" and failed["error"]["code"] == "empty_completion"
    assert failed["usage"]["total_tokens"] == 910
    assert got["usage"]["total_tokens"] == 910 + 4 * 18
    assert got["usage"]["cost"] == pytest.approx(0.5 + 4 * 0.01)
    assert got["fusion"]["usage_complete"] is True


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_billed_research_round_counts_when_the_panelist_then_fails(
    upstream: FakeUpstream, fake_upstream: tuple[FakeUpstream, str], start_server: Any, tmp_path: Path, stream: bool
) -> None:
    _, fake_url = fake_upstream
    price_everything_else(upstream)
    fetch = {"function": {"name": "web_fetch", "arguments": {"url": f"{fake_url}/v1/models"}}}
    upstream.script("a", Script(tool_calls=[fetch], usage=BILLED, cost=0.5), Script(status=500))
    research = {"fetch": {"allow_private": ["127.0.0.0/8"]}}

    with start_server(activity={"path": tmp_path / "activity.sqlite3"}, research=research,
                      retry={"max_attempts": 1}) as url:  # fmt: skip
        got, gid = fusion(url, stream=stream, tools=["web_fetch"])
        record = assert_record_agrees(url, gid, got["usage"])

    _, second = upstream.calls_for("a")
    assert second.body["messages"][-1]["role"] == "tool"  # the research round ran, then the panelist failed
    failed = got["fusion"]["panel"][0]
    assert failed["status"] == "error" and failed["error"]["status_code"] == 500
    assert failed["usage"]["total_tokens"] == 910
    assert got["usage"]["total_tokens"] == 910 + 4 * 18
    assert got["usage"]["cost"] == pytest.approx(0.5 + 4 * 0.01)
    assert got["fusion"]["usage_complete"] is True  # the refused call was billed nothing, and is known to be
    refused = [c for c in record["calls"] if c["model"] == "fake/a" and c["status"] == "error"]
    assert refused[0]["cost"] == 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_call_of_unknown_usage_makes_the_usage_incomplete(
    upstream: FakeUpstream, start_server: Any, tmp_path: Path, stream: bool
) -> None:
    price_everything_else(upstream)
    # A completion without a usage object: it was answered (so billed), for an unknown amount.
    unreported = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "a",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "A."}, "finish_reason": "stop"}],
    }
    upstream.script("a", Script(raw_body=json.dumps(unreported).encode()))  # fmt: skip

    with start_server(activity={"path": tmp_path / "activity.sqlite3"}) as url:
        got, gid = fusion(url, stream=stream)
        assert_record_agrees(url, gid, got["usage"])

    [call] = upstream.calls_for("a")
    assert call.finished is not None and not call.disconnected  # the fault happened: a answered, without usage
    assert got["fusion"]["panel"][0]["status"] == "ok"
    assert got["fusion"]["usage_complete"] is False
    assert got["usage"]["total_tokens"] == 4 * 18 and "cost" not in got["usage"]  # a partial sum is no cost


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_panelist_cut_off_by_its_timeout_makes_the_usage_incomplete(
    upstream: FakeUpstream, start_server: Any, tmp_path: Path, stream: bool
) -> None:
    price_everything_else(upstream)
    upstream.script("a", Script(content="A.", cost=0.01), Script(delay_s=30))

    with start_server(activity={"path": tmp_path / "activity.sqlite3"}) as url:
        # The server's first fusion pays one-time costs (its panelists took 0.8 s on a loaded machine, the next
        # fusion's 15 ms): not in the one timed, where they once kept b and c past the panel's limit as well as a.
        warm, _ = fusion(url, stream=stream)
        assert warm["fusion"]["usage_complete"] is True
        # a answers in 30 s: cut off. b and c answer at once, on a server that has served a fusion already.
        got, gid = fusion(url, stream=stream, panel_timeout_s=3)
        assert_record_agrees(url, gid, got["usage"])

    _, cut = upstream.calls_for("a")
    wait_until(lambda: cut.disconnected)  # the request reached a, which may bill it
    assert [p["status"] for p in got["fusion"]["panel"]] == ["error", "ok", "ok"]
    assert got["fusion"]["panel"][0]["error"]["code"] == "timeout"
    assert got["fusion"]["usage_complete"] is False
    assert got["usage"]["total_tokens"] == 4 * 18 and "cost" not in got["usage"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_panelist_retried_after_its_answer_was_cut_off_makes_the_usage_incomplete(
    upstream: FakeUpstream, start_server: Any, tmp_path: Path, stream: bool
) -> None:
    """The answer cut off on its way was generated, so billed: the retry's usage is not all the panelist used."""
    price_everything_else(upstream)
    upstream.script("a", Script(content="A long answer.", usage=BILLED, cost=0.5, cut_stream_after=1),
                    Script(content="A.", cost=0.01))  # fmt: skip

    with start_server(activity={"path": tmp_path / "activity.sqlite3"}, retry={"max_attempts": 2}) as url:
        got, gid = fusion(url, stream=stream)
        record = assert_record_agrees(url, gid, got["usage"])

    assert [call.fault for call in upstream.calls_for("a")] == ["cut", None]  # the fault happened, then the retry
    assert got["fusion"]["panel"][0]["status"] == "ok"
    assert got["fusion"]["usage_complete"] is False
    assert got["usage"]["total_tokens"] == 4 * 18 and "cost" not in got["usage"]  # not the retry's $0.01 as all
    [panelist] = [c for c in record["calls"] if c["model"] == "fake/a"]
    assert (panelist["retries"], panelist["cost"]) == (1, None)


def test_tool_mode_counts_a_billed_empty_answer_too(upstream: FakeUpstream, start_server: Any, tmp_path: Path) -> None:
    price_everything_else(upstream)
    upstream.script("a", Script(content="", usage=BILLED, cost=0.5))
    call = {"function": {"name": "fusion", "arguments": {"prompt": "q"}}}
    upstream.script("outer", Script(tool_calls=[call], cost=0.01), Script(content="Done.", cost=0.01))
    tool = {"type": "openrouter:fusion", "parameters": {"analysis_models": ["fake/a", "fake/b"], "model": "fake/judge"}}
    body = {"model": "fake/outer", "messages": HI, "tools": [tool]}

    with start_server(activity={"path": tmp_path / "activity.sqlite3"}) as url:
        response = httpx.post(f"{url}{CHAT}", json=body, timeout=30)
        usage = response.json()["usage"]
        assert_record_agrees(url, response.headers["x-generation-id"], usage)

    assert response.json()["fusion"]["panel"][0]["error"]["code"] == "empty_completion"
    assert usage["total_tokens"] == 910 + 4 * 18  # a, b, the judge and two outer calls
    assert usage["cost"] == pytest.approx(0.5 + 4 * 0.01)
    assert response.json()["fusion"]["usage_complete"] is True


@pytest.mark.parametrize("reported", [1e308, -0.5, 20_000.0])
def test_a_cost_no_call_can_have_is_no_cost(
    upstream: FakeUpstream, start_server: Any, tmp_path: Path, reported: float
) -> None:
    """An upstream reporting 1e308 USD (broken, or hostile) would fill every spend cap and the cost metric for good:
    such a cost is unknown, as if none were reported."""
    upstream.script("solo", Script(content="Hi.", usage={"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5,
                                                         "cost": reported}))  # fmt: skip
    with start_server(activity={"path": tmp_path / "activity.sqlite3"}) as url:
        response = httpx.post(f"{url}{CHAT}", json={"model": "fake/solo", "messages": HI}, timeout=30)
        assert response.status_code == 200, response.text
        record = generation(url, response.headers["x-generation-id"])
        metrics = httpx.get(f"{url}/metrics").text
    assert record["total_cost"] is None and record["tokens_completion"] == 1
    assert "openfusion_cost_usd_total 0.0" in metrics
