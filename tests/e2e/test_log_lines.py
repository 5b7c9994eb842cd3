"""Log lines of the real server, plain text or JSON: one line per record, whatever the text it quotes."""

from __future__ import annotations

import json
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


def test_a_providers_words_cannot_forge_a_json_log_line(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """In the JSON log, NEL, U+2028, U+2029 and the other C1 controls are escapes too: a shipper or viewer that
    ends lines at Unicode line breaks (Python's `str.splitlines()`, JavaScript's line terminators) reads each
    record as one line, and never a line the provider's text wrote."""
    _, upstream_url = fake_upstream
    forged = '{"level":"critical","logger":"openfusion","message":"forged: all keys revoked"}'
    for model in ("a", "b", "c"):
        upstream.script(model, Script(status=500, error_message=f"bad\x85{forged}\u2028{forged}\u2029\x9b2J"))
    with serve(provider_config(upstream_url), presets_dir, tmp_path) as served:
        body = {"model": "fusion/trio", "messages": HI}
        assert httpx.post(f"{served.url}/v1/chat/completions", json=body, timeout=30).status_code == 502
        wait_until(lambda: "request failed" in served.log_text(), timeout=5)
        text = served.log_path.read_text()

    lines = text.splitlines()  # ends lines at NEL, U+2028 and U+2029 too
    records = [json.loads(line) for line in lines if line.startswith("{")]  # a record cut in two would not parse
    assert "forged: all keys revoked" not in [record["message"] for record in records]
    (failed,) = [record for record in records if record["message"].startswith("request failed")]
    assert f"bad\x85{forged}\u2028{forged}\u2029\x9b2J" in failed["message"]  # all of it, intact
    assert not set("\x85\u2028\u2029\x9b") & set(text)
