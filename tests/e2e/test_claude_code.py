"""Claude Code on a fusion preset, end to end: `claude -p` with ANTHROPIC_BASE_URL pointing at openfusion.

The binary comes from the npm package `@anthropic-ai/claude-code`: `.ci/run` installs it and sets
CLAUDE_BIN; elsewhere a `claude` on PATH is used, and without one the tests are skipped (in CI,
where CI=true, they fail instead: there the binary must be there). Claude Code runs with a fresh
HOME and without its non-essential traffic (telemetry, updates, error reports), so it only ever
talks to the server under test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, Script
from openfusion.app import create_app
from openfusion.settings import Settings

# Read at import: the tests' clean environment is set up later.
CLAUDE = os.environ.get("CLAUDE_BIN") or shutil.which("claude")
IN_CI = bool(os.environ.get("CI"))
CLIENT_KEY = "sk-claude-client"


@pytest.fixture
def gateway(upstream: FakeUpstream, make_settings: Callable[..., Settings]) -> Iterator[str]:
    """openfusion with a client key, as a team would run it for Claude Code."""
    settings = make_settings(keys=[{"name": "claude-code", "key_env": "CLAUDE_CLIENT_KEY"}])
    app = create_app(settings, environ={"FAKE_KEY": "sk-provider-secret", "CLAUDE_CLIENT_KEY": CLIENT_KEY})
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture
def claude(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Run `claude -p --output-format json` against a base URL; returns its result object."""
    binary = CLAUDE
    if binary is None:
        if IN_CI:
            pytest.fail("Claude Code not found: .ci/run installs @anthropic-ai/claude-code and sets CLAUDE_BIN")
        pytest.skip("Claude Code not installed (npm install @anthropic-ai/claude-code; set CLAUDE_BIN)")

    def run(url: str, prompt: str, *extra: str) -> dict[str, Any]:
        home, work = tmp_path / "home", tmp_path / "work"
        home.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        # The README's configuration: the gateway, a client key, and the model names mapped to openfusion's.
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": url,
            "ANTHROPIC_API_KEY": CLIENT_KEY,
            "ANTHROPIC_MODEL": "fusion/trio",
            "ANTHROPIC_DEFAULT_OPUS_MODEL": "fusion/trio",
            "ANTHROPIC_DEFAULT_SONNET_MODEL": "fusion/trio",
            "ANTHROPIC_DEFAULT_HAIKU_MODEL": "fake/small",
            "ANTHROPIC_SMALL_FAST_MODEL": "fake/small",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
        }
        done = subprocess.run(
            [binary, "-p", prompt, "--output-format", "json", *extra],
            cwd=work, env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    return run


def test_claude_code_answers_on_a_fusion_preset(
    upstream: FakeUpstream, gateway: str, claude: Callable[..., dict[str, Any]]
) -> None:
    upstream.script("synth", Script(chunks=["The sky is blue ", "because of Rayleigh scattering."]))

    result = claude(gateway, "Why is the sky blue?")

    assert result["is_error"] is False and result["result"] == "The sky is blue because of Rayleigh scattering."
    # The whole pipeline ran: three panelists, the judge, and the synthesizer with Claude Code's own tools.
    assert {"a", "b", "c", "judge", "synth"} <= {c.model for c in upstream.calls}
    synth = upstream.calls_for("synth")[0]
    assert "Bash" in [tool["function"]["name"] for tool in synth.body["tools"]]
    assert synth.body["messages"][0]["role"] == "system"  # Claude Code's system prompt, first
    assert any("Why is the sky blue?" in json.dumps(m) for m in synth.body["messages"] if m["role"] == "user")


def test_claude_code_runs_a_command_and_its_small_fast_model(
    upstream: FakeUpstream, gateway: str, claude: Callable[..., dict[str, Any]]
) -> None:
    command = {"id": "toolu_echo", "function": {"name": "Bash", "arguments": {
        "command": "echo fused-$((40+2))", "description": "Print a number"}}}  # fmt: skip
    helper = {"id": "toolu_agent", "function": {"name": "Agent", "arguments": {
        "description": "Quick check", "prompt": "Say hello.", "subagent_type": "general-purpose",
        "model": "haiku", "run_in_background": False}}}  # fmt: skip
    upstream.script(
        "synth", Script(tool_calls=[command]), Script(tool_calls=[helper]), Script(content="It printed fused-42.")
    )
    upstream.script("small", Script(content="Hello from the small model."))

    result = claude(gateway, "Run the echo, then ask a helper.", "--allowedTools", "Bash,Agent")

    assert result["is_error"] is False and result["result"] == "It printed fused-42."
    turns = [call.body["messages"] for call in upstream.calls_for("synth")]
    assert len(turns) == 3
    output = next(m for m in turns[1] if m["role"] == "tool")
    assert output["tool_call_id"] == "toolu_echo" and "fused-42" in output["content"]
    # The helper agent ran on the small/fast model (a pass-through model here), and its answer came back.
    assert upstream.calls_for("small"), [c.model for c in upstream.calls]
    helped = next(m for m in turns[2] if m["role"] == "tool" and m["tool_call_id"] == "toolu_agent")
    assert "Hello from the small model." in helped["content"]
    assert len(upstream.calls_for("a")) == 1  # the tool results are steps of the same turn: no new panel
