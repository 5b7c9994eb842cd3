"""`openfusion serve --workers 2` and wrong keys: braked as one server through Redis, and named alike by every worker.

Requests are put on a given worker with `Served.only` (see test_workers.py); the `worker` field of each log line
shows who wrote it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from e2e.processes import provider_config, serve
from fakes.upstream import FakeUpstream

pytestmark = pytest.mark.e2e

KEY = "sk-workers-brake-right-key-0123"
ENV = {"OPENFUSION_API_KEYS": KEY}
REDIS_URL = "redis://127.0.0.1:6379/0"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_wrong_keys_spread_over_the_workers_are_braked_as_one_address(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path, redis_prefix: str
) -> None:
    """Four wrong keys, two on each worker: counted per worker, neither would brake; in Redis, the fourth brakes the
    address on both, the right key included, and the brake's start is logged once."""
    _, upstream_url = fake_upstream
    top = f'redis_url = "{REDIS_URL}"\n[limits]\nredis_prefix = "{redis_prefix}"\nauth_failures = 4\n'
    with serve(provider_config(upstream_url, top=top), presets_dir, tmp_path, args=("--workers", "2"), env=ENV) as s:
        pids = s.wait_serving(2)
        wrong = []
        for attempt, number in enumerate((1, 2, 1, 2)):
            with s.only(pids[number], pids):
                wrong.append(httpx.get(f"{s.url}/v1/models", headers=_bearer(f"sk-guess-{attempt:020d}"), timeout=10))
        braked = {}
        for number in (1, 2):
            with s.only(pids[number], pids):
                braked[number] = httpx.get(f"{s.url}/v1/models", headers=_bearer(KEY), timeout=10)
        with redis.Redis.from_url(REDIS_URL) as client:
            keys = sorted(key.decode() for key in client.scan_iter(f"{{{redis_prefix}}}:brake*"))
            block_ms = client.pttl(f"{{{redis_prefix}}}:braked:127.0.0.1")
        records = s.log()

    assert [r.status_code for r in wrong] == [401] * 4
    for number, response in braked.items():
        assert response.status_code == 429, (number, response.text)
        assert response.json()["error"]["code"] == "auth_failures"
        assert 290 <= int(response.headers["retry-after"]) <= 300
    # The window's count is spent in the block.
    assert keys == [f"{{{redis_prefix}}}:brake:addresses", f"{{{redis_prefix}}}:braked:127.0.0.1"]
    assert 0 < block_ms <= 300_000  # each key of the brake expires
    starts = [r for r in records if r["message"].startswith("authentication brake")]
    assert len(starts) == 1 and "4 wrong keys" in starts[0]["message"]
    assert KEY not in s.log_text()


def test_a_wrong_key_has_the_same_fingerprint_in_every_worker(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """One stale key sent to both workers is named alike in both logs (a key made by the supervisor, never logged);
    another key is named otherwise."""
    _, upstream_url = fake_upstream
    stale, other = "sk-stale-key-of-a-client-0001", "sk-another-guess-entirely-0002"
    with serve(provider_config(upstream_url), presets_dir, tmp_path, args=("--workers", "2"), env=ENV) as s:
        pids = s.wait_serving(2)
        for number, key in ((1, stale), (2, stale), (2, other)):
            with s.only(pids[number], pids):
                assert httpx.get(f"{s.url}/v1/models", headers=_bearer(key), timeout=10).status_code == 401
        records = [r for r in s.log() if r.get("reason") == "unknown"]

    assert [r["worker"] for r in records] == [1, 2, 2]
    first, second, third = (r["key_fingerprint"] for r in records)
    assert first == second != third


def test_the_fingerprint_key_set_by_the_operator_names_a_key_alike_on_every_server(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """Two servers (replicas) given one OPENFUSION_FINGERPRINT_KEY name a wrong key alike; the secret is never logged.
    A third, without it, names the key otherwise."""
    _, upstream_url = fake_upstream
    secret = "fingerprint-secret-of-the-operator-9f3a"
    stale = "sk-stale-key-of-a-client-0001"
    fingerprints, texts = [], []
    for number, env in enumerate(({"OPENFUSION_FINGERPRINT_KEY": secret},) * 2 + ({},)):
        with serve(provider_config(upstream_url), presets_dir, tmp_path / f"r{number}", env={**ENV, **env}) as s:
            assert httpx.get(f"{s.url}/v1/models", headers=_bearer(stale), timeout=10).status_code == 401
            (record,) = [r for r in s.log() if r.get("reason") == "unknown"]
            fingerprints.append(record["key_fingerprint"])
            texts.append(s.log_text())

    assert fingerprints[0] == fingerprints[1] != fingerprints[2]
    assert not [text for text in texts if secret in text or stale in text]
