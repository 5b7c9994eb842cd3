"""Refused authentications against the real `openfusion serve`: counted in /metrics by reason, logged with the
client's address and never the key, and a guessing address braked (429 in the caller's dialect) until its time is up.

Clients connect from other loopback addresses (127.0.0.2, …), which Linux routes to the same interface.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.processes import metric, provider_config, serve
from fakes.upstream import FakeUpstream, wait_until
from openfusion.access.refusals import KEYLESS_BURST, KEYLESS_PER_S

pytestmark = pytest.mark.e2e

KEY = "sk-refusals-right-key-0123"
ADMIN = "sk-refusals-admin-key-4567"
GUESSES = [f"sk-guess-number-{n:04d}-abcdef" for n in range(3)]
BLOCK_S = 1.5
CHAT = {"model": "fake/plain", "messages": [{"role": "user", "content": "Hi"}]}
MESSAGES = {"model": "fake/plain", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}


def client_from(address: str) -> httpx.Client:
    """An HTTP client whose connections come from `address`."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


def refusals(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10).text
    return {
        r: metric(text, "openfusion_auth_refusals_total", reason=r)
        for r in ("missing", "malformed", "unknown", "braked")
    }


def test_refusals_are_counted_logged_without_the_key_and_a_guesser_is_braked_until_its_time_is_up(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    _, upstream_url = fake_upstream
    config = provider_config(upstream_url, top=f"[limits]\nauth_failures = 3\nauth_block_s = {BLOCK_S}\n")
    env = {"OPENFUSION_API_KEYS": KEY, "OPENFUSION_ADMIN_KEYS": ADMIN}
    with (
        serve(config, presets_dir, tmp_path, env=env) as served,
        client_from("127.0.0.2") as guesser,
        client_from("127.0.0.3") as other,
    ):
        url = served.url
        assert guesser.get(f"{url}/v1/models").status_code == 401  # missing
        assert guesser.get(f"{url}/v1/models", headers={"Authorization": f"Token {KEY}"}).status_code == 401
        # Wrong keys, on the model-calling route's short way and on an ordinary route; the first one twice.
        assert guesser.post(f"{url}/v1/chat/completions", json=CHAT, headers=_bearer(GUESSES[0])).status_code == 401
        assert guesser.get(f"{url}/v1/models", headers=_bearer(GUESSES[0])).status_code == 401
        assert guesser.get(f"{url}/v1/models", headers=_bearer(GUESSES[1])).status_code == 401  # the third: braked

        chat = guesser.post(f"{url}/v1/chat/completions", json=CHAT, headers=_bearer(KEY))  # the right key too
        messages = guesser.post(f"{url}/v1/messages", json=MESSAGES, headers={"x-api-key": KEY})
        served_meanwhile = other.post(f"{url}/v1/chat/completions", json=CHAT, headers=_bearer(KEY))
        counted = refusals(url)
        time.sleep(BLOCK_S + 0.2)
        after = guesser.post(f"{url}/v1/chat/completions", json=CHAT, headers=_bearer(KEY))
        wait_until(lambda: "authentication brake" in served.log_text(), timeout=5)
        records, text = served.log(), served.log_text()

    assert chat.status_code == 429 and chat.json()["error"]["code"] == "auth_failures"
    assert 1 <= int(chat.headers["retry-after"]) <= 2
    assert messages.status_code == 429 and int(messages.headers["retry-after"]) >= 1
    assert messages.json()["type"] == "error" and messages.json()["error"]["type"] == "rate_limit_error"  # Anthropic's
    assert served_meanwhile.status_code == 200  # another address, never slowed
    assert after.status_code == 200  # the brake has ended
    assert counted == {"missing": 1, "malformed": 1, "unknown": 3, "braked": 2}

    refused = [r for r in records if r["message"].startswith("authentication refused")]
    assert [(r["reason"], r["level"], r["client_address"]) for r in refused] == [
        ("missing", "info", "127.0.0.2"),
        ("malformed", "warning", "127.0.0.2"),
        *[("unknown", "warning", "127.0.0.2")] * 3,
    ]
    fingerprints = [r["key_fingerprint"] for r in refused if r["reason"] == "unknown"]
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]  # one key retried, told from another
    (brake,) = [r for r in records if r["message"].startswith("authentication brake")]
    assert brake["level"] == "warning" and brake["client_address"] == "127.0.0.2"
    assert "127.0.0.2" in brake["message"] and "3 wrong keys" in brake["message"]
    # Nothing of a wrong key: neither the key, nor a piece of it, nor its SHA-256's digits (what names a listed key).
    for key in GUESSES:
        digest = hashlib.sha256(key.encode()).hexdigest()
        assert not [piece for piece in (key, key[-8:], digest[:8]) if piece in text], key
    assert KEY not in text and ADMIN not in text


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_flood_of_requests_without_a_key_is_counted_not_logged_line_by_line_nor_braked(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """Requests without a key cost nothing and are never braked; a flood of them, from one address or many, must not
    flood the log (each is counted in /metrics), nor keep wrong keys mixed in among them from being braked."""
    _, upstream_url = fake_upstream
    config = provider_config(upstream_url, top="[limits]\nauth_failures = 3\n")
    env = {"OPENFUSION_API_KEYS": KEY, "OPENFUSION_ADMIN_KEYS": ADMIN}
    with serve(config, presets_dir, tmp_path, env=env) as served, client_from("127.0.0.2") as flooder:
        url, started = served.url, time.monotonic()
        for _ in range(150):
            assert flooder.get(f"{url}/v1/models").status_code == 401
        for host in range(1, 61):  # one from each of many addresses
            with client_from(f"127.0.1.{host}") as one:
                assert one.get(f"{url}/v1/models", headers={"Authorization": "Token x"}).status_code == 401
        with client_from("127.0.0.3") as guesser:
            statuses = []
            for guess in GUESSES:  # 30 requests without a key after each of the first two wrong keys
                statuses.append(guesser.get(f"{url}/v1/models", headers=_bearer(guess)).status_code)
                if guess != GUESSES[-1]:
                    statuses += {guesser.get(f"{url}/v1/models").status_code for _ in range(30)}
            braked = guesser.get(f"{url}/v1/models", headers=_bearer(KEY))
        elapsed = time.monotonic() - started
        counted = refusals(url)
        records = served.log()

    assert counted == {"missing": 210, "malformed": 60, "unknown": 3, "braked": 1}
    assert statuses == [401] * 5 and braked.status_code == 429  # the flood in between neither helped nor hindered
    keyless = [r for r in records if r.get("reason") in ("missing", "malformed")]
    own = [r["client_address"] for r in keyless if r["client_address"].startswith("127.0.0.")]
    # One line for the flood of one address; the guesser's own, after the many addresses' flood, may be left out.
    assert own in (["127.0.0.2"], ["127.0.0.2", "127.0.0.3"])
    assert len(keyless) <= KEYLESS_BURST + KEYLESS_PER_S * elapsed + 1  # many addresses: a burst, then one a second
    assert sum(r.get("left_out", 0) for r in keyless) <= counted["missing"] + counted["malformed"] - len(keyless)
    assert [r["reason"] for r in records if r.get("reason") == "unknown"] == ["unknown"] * 3  # every guess logged
