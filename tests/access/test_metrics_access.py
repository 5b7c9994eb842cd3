"""Who reads /metrics: an admin or metrics key, or anyone on a server without keys; no other tenant's key.

/metrics is the whole server's traffic and spend (requests per preset and provider, tokens, USD): on a shared
gateway, one client reading it learns what every other client does. Against the real server under uvicorn.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
from fastapi import FastAPI

from fakes.upstream import FakeUpstream, Script
from openfusion.access.keys import key_digest, listed_key_name

from .conftest import bearer, chat_body

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]
ALICE, SCRAPER, ROOT = "sk-alice-0123456789abcdef", "sk-scraper-0123456789abcdef", "sk-root-0123456789abcdef"
LISTED, LISTED_ADMIN = "sk-listed-0123456789abcdef", "sk-listed-admin-0123456789abcdef"
ACCESS = {
    "keys": [
        {"name": "alice", "key_env": "ALICE_KEY"},
        # Prometheus's key: reads /metrics, and no model matches its scope, so it cannot spend.
        {"name": "scraper", "key_env": "SCRAPER_KEY", "metrics": True, "models": ["metrics-only"]},
        {"name": "root", "key_env": "ROOT_KEY", "admin": True},
    ],
    "api_keys": LISTED,
    "admin_keys": LISTED_ADMIN,
}
ENVIRON = {"ALICE_KEY": ALICE, "SCRAPER_KEY": SCRAPER, "ROOT_KEY": ROOT}
SERVED = 'openfusion_requests_total{route="fusion/trio",status="ok"} 1.0'


def test_only_admin_and_metrics_keys_read_the_whole_servers_metrics(upstream: FakeUpstream, serve: Serve) -> None:
    upstream.script("a", Script(content="Blue."))
    with serve(ACCESS, environ=ENVIRON) as (url, _):
        asked = httpx.post(f"{url}/v1/chat/completions", json=chat_body(), headers=bearer(ALICE), timeout=20)
        assert asked.status_code == 200, asked.text

        for key in (ALICE, LISTED):  # ordinary client keys, from [[keys]] and from OPENFUSION_API_KEYS
            refused = httpx.get(f"{url}/metrics", headers=bearer(key))
            assert refused.status_code == 403, refused.text
            error = refused.json()["error"]
            assert (error["type"], error["code"]) == ("permission_error", "metrics_not_allowed")
            assert "openfusion_" not in refused.text and key not in refused.text
        read = {key: httpx.get(f"{url}/metrics", headers=bearer(key)) for key in (SCRAPER, ROOT, LISTED_ADMIN)}
        assert {key: (answer.status_code, SERVED in answer.text) for key, answer in read.items()} == {
            SCRAPER: (200, True),
            ROOT: (200, True),
            LISTED_ADMIN: (200, True),
        }
        assert httpx.get(f"{url}/metrics").status_code == 401
        # The scrape key cannot spend.
        spent = httpx.post(f"{url}/v1/chat/completions", json=chat_body(), headers=bearer(SCRAPER), timeout=20)
        assert spent.status_code == 403 and spent.json()["error"]["code"] == "model_not_allowed"
    # The refusal names the key (never its value) and says how to get a metrics key.
    message = error["message"]
    assert listed_key_name("env", key_digest(LISTED)) in message and "metrics = true" in message


def test_without_keys_metrics_stay_open(upstream: FakeUpstream, serve: Serve) -> None:
    """A sidecar without keys has one tenant: its metrics are its own."""
    access: dict[str, Any] = {}
    with serve(access) as (url, _):
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body(), timeout=20).status_code == 200
        answer = httpx.get(f"{url}/metrics")
    assert answer.status_code == 200 and SERVED in answer.text
