"""Log lines of the real server in its plain-text format: one line per record, whatever the text it quotes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.processes import HI, provider_config, serve
from fakes.upstream import FakeUpstream, Script, wait_until

pytestmark = pytest.mark.e2e

FORGED = '2026-01-01 00:00:00,000 CRITICAL openfusion: forged "all keys revoked"'


def test_a_providers_words_cannot_forge_or_colour_a_text_log_line(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """An error message a provider sent (and with it whatever of the request it quotes) is logged with its line
    breaks and terminal escapes shown as escapes: it cannot start a line of its own or steer the terminal."""
    _, upstream_url = fake_upstream
    for model in ("a", "b", "c"):
        upstream.script(model, Script(status=500, error_message=f"bad input\n{FORGED}\r\x1b[2J\x1b[31m\x85\u2028"))
    with serve(provider_config(upstream_url), presets_dir, tmp_path, args=("--log-format", "text")) as served:
        body = {"model": "fusion/trio", "messages": HI}
        assert httpx.post(f"{served.url}/v1/chat/completions", json=body, timeout=30).status_code == 502
        wait_until(lambda: "request failed" in served.log_text(), timeout=5)
        text = served.log_path.read_text()

    (failed,) = [line for line in text.splitlines() if "request failed" in line]
    assert "bad input\\n2026-01-01" in failed and "\\x1b[2J" in failed  # all of it, on its own line
    assert not any(line.startswith("2026-01-01") for line in text.splitlines())
    assert not set("\x1b\r\x85\u2028") & set(text)
