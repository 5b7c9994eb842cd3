"""Codex CLI (a custom model provider with `wire_api = "responses"`) on a fusion preset, end to end.

The binary comes from the npm package `@openai/codex`: `.ci/run` installs it and sets
CODEX_BIN; elsewhere a `codex` on PATH is used, and without one the tests are skipped
(in CI, where CI=true, they fail instead: there the binary must be there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fakes.upstream import FakeUpstream, Script

# Read at import: the tests' clean environment is set up later.
CODEX = os.environ.get("CODEX_BIN") or shutil.which("codex")
IN_CI = bool(os.environ.get("CI"))


@pytest.fixture
def codex(tmp_path: Path) -> Callable[..., list[dict[str, Any]]]:
    """Run `codex exec --json` against a base URL; returns its JSON events."""
    binary = CODEX
    if binary is None:
        if IN_CI:
            pytest.fail("Codex CLI not found: .ci/run installs @openai/codex and sets CODEX_BIN")
        pytest.skip("Codex CLI not installed (npm install @openai/codex; set CODEX_BIN)")

    def run(url: str, prompt: str, *extra: str, model: str = "fusion/trio") -> list[dict[str, Any]]:
        home, work = tmp_path / "codex-home", tmp_path / "work"
        home.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        # The README's configuration: a custom provider speaking the Responses API to openfusion.
        (home / "config.toml").write_text(
            f'model = "{model}"\nmodel_provider = "openfusion"\n\n'
            "[model_providers.openfusion]\n"
            'name = "openfusion"\n'
            f'base_url = "{url}/v1"\n'
            'wire_api = "responses"\n'
            'env_key = "OPENFUSION_API_KEY"\n'
        )
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "CODEX_HOME": str(home),
               "OPENFUSION_API_KEY": "sk-client-key"}  # fmt: skip
        done = subprocess.run(
            [binary, "exec", "--skip-git-repo-check", "--json", *extra, prompt],
            cwd=work, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    return run


def messages(events: list[dict[str, Any]]) -> list[str]:
    return [e["item"]["text"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == "agent_message"]


def test_codex_answers_on_a_fusion_preset(
    upstream: FakeUpstream, server: str, codex: Callable[..., list[dict[str, Any]]]
) -> None:
    upstream.script("synth", Script(chunks=["The sky is blue ", "because of Rayleigh scattering."]))

    events = codex(server, "Why is the sky blue?")

    assert messages(events) == ["The sky is blue because of Rayleigh scattering."]
    assert [e["usage"]["input_tokens"] for e in events if e["type"] == "turn.completed"] == [55]
    # The whole pipeline ran: three panelists, the judge, and the synthesizer with Codex's own tools.
    assert {c.model for c in upstream.calls} == {"a", "b", "c", "judge", "synth"}
    tools = [t["function"]["name"] for t in upstream.calls_for("synth")[0].body["tools"]]
    assert "exec_command" in tools or "shell" in tools


def test_codex_runs_a_command_the_fused_answer_asks_for(
    upstream: FakeUpstream, server: str, codex: Callable[..., list[dict[str, Any]]]
) -> None:
    command = {"id": "call_echo", "function": {"name": "exec_command", "arguments": {"cmd": "echo fused-$((40+2))"}}}
    upstream.script("synth", Script(tool_calls=[command]), Script(content="It printed fused-42."))

    events = codex(server, "Run the echo.", "--dangerously-bypass-approvals-and-sandbox")

    ran = [e["item"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == "command_execution"]
    assert len(ran) == 1 and ran[0]["aggregated_output"].strip() == "fused-42"
    assert messages(events) == ["It printed fused-42."]
    second = upstream.calls_for("synth")[1].body["messages"]
    output = next(m for m in second if m["role"] == "tool")
    assert output["tool_call_id"] == "call_echo" and "fused-42" in output["content"]
    assert len(upstream.calls_for("a")) == 1  # the command's result is a step of the same turn: no new panel
