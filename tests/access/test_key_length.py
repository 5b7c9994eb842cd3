"""Client keys shorter than 16 characters are refused at start-up: `openfusion serve` says which, never the value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from e2e.processes import serve

SHORT = "sk-short-key1"  # 13 characters: guessable far too fast
LONG = "sk-long-enough-16"  # 17


def _serve(tmp_path: Path, env: dict[str, str], extra: str = "") -> subprocess.CompletedProcess[str]:
    config = tmp_path / "openfusion.toml"
    config.write_text(f'builtin_providers = false\ndefault_preset = "quality"\n{extra}')
    command = [str(Path(sys.executable).parent / "openfusion"), "serve", "--port", "0", "--config", str(config)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENFUSION_")}
    return subprocess.run(command, env={**clean, **env}, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("env", "extra", "named"),
    [
        ({"OPENFUSION_API_KEYS": f"{LONG},{SHORT}"}, "", "key 'env key 2 of 2' (OPENFUSION_API_KEYS)"),
        ({"OPENFUSION_ADMIN_KEYS": SHORT}, "", "key 'admin key 1 of 1' (OPENFUSION_ADMIN_KEYS)"),
        ({"TEAM_KEY": SHORT}, '[[keys]]\nname = "team"\nkey_env = "TEAM_KEY"\n', "key 'team' (TEAM_KEY)"),
    ],
)
def test_a_short_client_key_stops_the_server_with_a_clear_message(
    tmp_path: Path, env: dict[str, str], extra: str, named: str
) -> None:
    result = _serve(tmp_path, env, extra)

    assert result.returncode == 2, result.stderr
    assert f"{named} is 13 characters long; client keys must have at least 16" in result.stderr
    assert "Traceback" not in result.stderr
    assert SHORT not in result.stderr + result.stdout  # named, never shown


def test_a_key_of_16_characters_is_accepted(tmp_path: Path, presets_dir: Path) -> None:
    key = "k" * 16
    config = '[[providers]]\nname = "x"\nbase_url = "http://127.0.0.1:9/v1"\nmodels = ["fake/*"]\n'
    with serve(f'default_preset = "trio"\n{config}', presets_dir, tmp_path, env={"OPENFUSION_API_KEYS": key}) as s:
        assert httpx.get(f"{s.url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
