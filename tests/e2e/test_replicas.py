"""Replicas as real processes: two `openfusion serve` sharing PostgreSQL (activity) and Redis (limits)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from fakes.upstream import FakeUpstream

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
HI = [{"role": "user", "content": "Hi"}]
KEY = {"Authorization": "Bearer sk-team-shared-7d2e4f9a"}
OPS = {"Authorization": "Bearer sk-ops-unlimited"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(config: Path, presets: Path, environ: dict[str, str]) -> tuple[str, subprocess.Popen[bytes]]:
    port = _free_port()
    command = [str(Path(sys.executable).parent / "openfusion"), "serve", "--port", str(port), "--config",
               str(config), "--presets", str(presets)]  # fmt: skip
    process = subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return url, process
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "openfusion serve did not start"
        time.sleep(0.1)


def test_two_processes_share_history_and_limits(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path, postgres_url: str, redis_prefix: str
) -> None:
    _, upstream_url = fake_upstream
    config = tmp_path / "openfusion.toml"
    config.write_text(
        'default_preset = "trio"\nredis_url = "redis://127.0.0.1:6379/0"\n'
        f'[limits]\nredis_prefix = "{redis_prefix}"\n\n'
        '[[keys]]\nname = "team"\nkey_env = "TEAM_KEY"\nrequests_per_minute = 3\n\n'
        '[[keys]]\nname = "ops"\nkey_env = "OPS_KEY"\nadmin = true\n\n'  # reads the team's activity
        f'[[providers]]\nname = "fake"\nbase_url = "{upstream_url}/v1"\nmodels = ["fake/*"]\nstrip_prefix = true\n'
    )
    keys = {"TEAM_KEY": "sk-team-shared-7d2e4f9a", "OPS_KEY": "sk-ops-unlimited"}
    environ = {**os.environ, "DATABASE_URL": postgres_url, **keys}
    replicas = [_serve(config, presets_dir, environ) for _ in range(2)]
    try:
        (url_a, _), (url_b, _) = replicas
        through_a = httpx.post(f"{url_a}/v1/chat/completions", headers=KEY, timeout=20,
                               json={"model": "fusion/trio", "messages": HI})  # fmt: skip
        assert through_a.status_code == 200, through_a.text
        gid = through_a.headers["x-generation-id"]
        deadline = time.monotonic() + 10
        while (seen := httpx.get(f"{url_b}/api/v1/generation", params={"id": gid}, headers=OPS)).status_code != 200:
            assert time.monotonic() < deadline, seen.text
            time.sleep(0.1)
        assert seen.json()["data"]["key_name"] == "team" and len(seen.json()["data"]["calls"]) == 5
        # The team key's 3 requests a minute are counted across both replicas.
        assert httpx.get(f"{url_b}/v1/models", headers=KEY).status_code == 200  # 2
        assert httpx.get(f"{url_a}/v1/models", headers=KEY).status_code == 200  # 3
        refused = httpx.get(f"{url_b}/v1/models", headers=KEY)  # 4: over the shared limit
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) > 0
    finally:
        for _, process in replicas:
            process.terminate()
        for _, process in replicas:
            output = process.communicate(timeout=20)[0].decode()
            assert "sk-team-shared-7d2e4f9a" not in output
