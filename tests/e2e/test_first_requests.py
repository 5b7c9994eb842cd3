"""A freshly started server's first requests do no one-time work: it was all done before the server said it serves.

What a first request loaded (prompt files read, modules imported) it loaded inside its panelists' time limits: on a
loaded machine a tight `panel_timeout_s` could then fail every panelist of the first fusion after a deploy. The check
is structural, not timed: the benchmarks' probe (`bench/probe`) records, in each worker, every module imported and
file opened between two signals, and the first requests of every kind must do neither.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from e2e.processes import HI, fusion, provider_config, serve
from fakes.upstream import FakeUpstream

pytestmark = pytest.mark.e2e

PROBE = Path(__file__).resolve().parents[2] / "bench" / "probe"
REPORT = signal.SIGRTMIN + 5  # the probe's FIRST_USE_SIGNAL_OFFSET


def _reports(path: Path, pid: int) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [row for row in map(json.loads, lines) if row["pid"] == pid]


def _report(path: Path, pids: list[int]) -> list[dict[str, Any]]:
    """Signal every worker, then wait for each one's line: what it imported and opened since its last one."""
    counts = {pid: len(_reports(path, pid)) for pid in pids}
    for pid in pids:
        os.kill(pid, REPORT)
    deadline = time.monotonic() + 30
    while any(len(_reports(path, pid)) == counts[pid] for pid in pids):
        assert time.monotonic() < deadline, "a worker did not report"
        time.sleep(0.05)
    return [_reports(path, pid)[counts[pid]] for pid in pids]


def test_the_first_requests_of_each_kind_load_nothing(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    _, upstream_url = fake_upstream
    first_use = tmp_path / "first_use.jsonl"
    config = provider_config(upstream_url, extra=f'[activity]\npath = "{tmp_path / "activity.sqlite3"}"\n')
    env = {"PYTHONPATH": str(PROBE), "OPENFUSION_FIRST_USE": str(first_use)}
    with serve(config, presets_dir, tmp_path / "server", args=("--workers", "2"), env=env) as served:
        workers = served.wait_serving(2)
        pids = sorted(workers.values())
        deadline = time.monotonic() + 60
        while httpx.get(f"{served.url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        armed = _report(first_use, pids)
        assert [row["armed"] for row in armed] == [False, False]

        for pid in pids:  # in each worker, the first request of each kind
            with served.only(pid, workers):
                _first_requests(served.url)

        loaded = _report(first_use, pids)
    assert all(row["armed"] for row in loaded)
    assert [(row["import"], row["open"]) for row in loaded] == [([], []), ([], [])]


def _first_requests(url: str) -> None:
    """A fusion (whole and streamed), a pass-through (both), a Responses and a Messages request, each its first."""
    answer = fusion(url).json()
    assert [p["status"] for p in answer["fusion"]["panel"]] == ["ok", "ok", "ok"]
    streamed = fusion(url, stream=True)
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    with openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as sdk:
        assert sdk.chat.completions.create(model="fake/a", messages=HI).choices[0].message.content  # type: ignore[arg-type]
        chunks = sdk.chat.completions.create(model="fake/a", messages=HI, stream=True)  # type: ignore[arg-type]
        assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        assert sdk.responses.create(model="fusion", input="Hi").output_text
    with anthropic.Anthropic(base_url=url, api_key="k", max_retries=0) as claude:
        assert claude.messages.create(model="fusion", max_tokens=100, messages=HI).content  # type: ignore[arg-type]
