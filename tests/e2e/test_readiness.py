"""A server with no usable provider key: a WARNING at start-up, alive on /healthz, not ready on /readyz."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from .processes import serve


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        # Nothing configured, no built-in provider's key in the environment (the key-less Ollama does not count).
        ('default_preset = "quality"\n', "no provider configured"),
        # A configured provider whose key variable is unset.
        (
            'default_preset = "quality"\nbuiltin_providers = false\n[[providers]]\nname = "corp"\n'
            'base_url = "http://127.0.0.1:9/v1"\napi_key_env = "CORP_LLM_KEY"\nmodels = ["corp/*"]\n',
            "no usable provider: CORP_LLM_KEY (provider 'corp') not set",
        ),
    ],
)
def test_no_usable_provider_warns_at_start_up_and_is_alive_but_not_ready(
    tmp_path: Path, config: str, reason: str
) -> None:
    presets = tmp_path / "presets"
    presets.mkdir()
    with serve(config, presets, tmp_path / "run") as served:
        assert httpx.get(f"{served.url}/healthz", timeout=10).status_code == 200
        ready = httpx.get(f"{served.url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["status"] == "not_ready" and ready.json()["checks"]["providers"] == reason
        [warning] = [line for line in served.log() if line["level"] == "warning" and reason in line["message"]]
        assert "OPENROUTER_API_KEY" in warning["message"] and "/readyz answers 503" in warning["message"]


def test_a_server_with_a_provider_key_is_ready_without_a_warning(tmp_path: Path) -> None:
    presets = tmp_path / "presets"
    presets.mkdir()
    env = {"OPENROUTER_API_KEY": "sk-or-not-a-real-key-0123"}
    with serve('default_preset = "quality"\n', presets, tmp_path / "run", env=env) as served:
        ready = httpx.get(f"{served.url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert not [line for line in served.log() if "provider" in line["message"] and line["level"] == "warning"]
