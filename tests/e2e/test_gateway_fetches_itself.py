"""A gateway whose fetch allow-list covers its own address, through `openfusion serve` and the official SDKs.

With `allow_private` (or `allow_hosts`) naming the gateway's own address, `web_fetch` could read the
gateway's GET routes: on an open gateway, `/v1/activity` with other requests' records. The fetcher marks
its requests (`Via: 1.1 openfusion-fetch`) and the server refuses a request so marked at its edge, on
every route and in each route's dialect, however the mark is written; ordinary clients never send it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from e2e.processes import Served, provider_config, serve
from fakes.upstream import FakeUpstream, Script, web_fetch_call

pytestmark = pytest.mark.e2e

HI: Any = [{"role": "user", "content": "What does the gateway know?"}]
# The mark as a client could write it to slip past a check: its case, a proxy's entry before it, a comment
# after it, a protocol name, a second Via line, no space after a comma.
MARKED = [
    [("Via", "1.1 openfusion-fetch")],
    [("Via", "1.1 OpenFusion-Fetch")],
    [("Via", "1.0 proxy.example, 1.1 openfusion-fetch")],
    [("Via", "1.1 openfusion-fetch (a comment)")],
    [("Via", "HTTP/1.1 openfusion-fetch")],
    [("Via", "1.1 nginx"), ("Via", "1.1 openfusion-fetch")],
    [("Via", "1.0 fred,1.1 openfusion-fetch")],
]


def _config(upstream_url: str) -> str:
    return provider_config(upstream_url, extra='[research.fetch]\nallow_private = ["127.0.0.0/8"]\n')


def _chat(served: Served, **extra: Any) -> Any:
    with openai.OpenAI(base_url=f"{served.url}/v1", api_key="sk-client-key", max_retries=0, timeout=60) as sdk:
        return sdk.chat.completions.create(model="fusion/trio", messages=HI, **extra)


def _wait_listed(served: Served, generation_id: str) -> None:
    """Until an ordinary client reads the request's record on /v1/activity (it is written as the answer ends)."""
    deadline = time.monotonic() + 30  # only so that a broken store fails the test instead of hanging it
    while generation_id not in httpx.get(f"{served.url}/v1/activity", timeout=10).text:
        assert time.monotonic() < deadline, f"{generation_id} was never listed on /v1/activity"
        time.sleep(0.05)


def test_web_fetch_cannot_read_the_gateways_own_pages(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    _, upstream_url = fake_upstream
    with serve(_config(upstream_url), presets_dir, tmp_path) as served:
        earlier = _chat(served)  # a request whose record a fetch of /v1/activity would list
        _wait_listed(served, earlier.id)
        paths = ["/v1/activity", "/activity", "/metrics"]
        calls = [web_fetch_call(f"{served.url}{p}") for p in paths]
        upstream.script("a", Script(tool_calls=calls), Script(content="Nothing was read."))
        later = _chat(served)

    assert later.choices[0].message.content
    results = [m["content"] for m in upstream.calls_for("a")[-1].body["messages"] if m["role"] == "tool"]
    assert not any(earlier.id in result for result in results)
    assert results == ["web_fetch error: 127.0.0.1 answered HTTP 403."] * len(paths)


def test_a_client_sending_the_fetchers_mark_is_refused_in_its_dialect_and_others_are_not(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    _, upstream_url = fake_upstream
    refused: list[Any] = []
    with serve(_config(upstream_url), presets_dir, tmp_path) as served:
        proxied = _chat(served, extra_headers={"Via": "1.1 nginx, 1.1 openfusion"})  # another proxy's Via
        for headers in MARKED:
            with pytest.raises(openai.PermissionDeniedError) as chat_refusal:
                _chat(served, extra_headers=dict(headers))
            refused.append(chat_refusal.value.body)
            raw = httpx.get(f"{served.url}/v1/activity", headers=headers, timeout=10)
            refused.append((raw.status_code, raw.json()["error"]["code"]))
        with anthropic.Anthropic(base_url=served.url, api_key="sk-client-key", max_retries=0) as claude:
            answered = claude.messages.create(
                model="fusion/trio", max_tokens=100, messages=HI, extra_headers={"Via": "1.1 squid"}
            )
            with pytest.raises(anthropic.PermissionDeniedError) as messages_refusal:
                claude.messages.create(
                    model="fusion/trio", max_tokens=100, messages=HI, extra_headers={"Via": "1.1 openfusion-fetch"}
                )

    assert proxied.choices[0].message.content and answered.content
    # A duplicate Via line cannot be sent through the SDK's dict of headers: its last value is sent.
    chat_bodies, raw_answers = refused[0::2], refused[1::2]
    assert all(body["code"] == "gateway_fetch" and body["type"] == "permission_error" for body in chat_bodies)
    assert raw_answers == [(403, "gateway_fetch")] * len(MARKED)
    error = messages_refusal.value.body
    assert error["type"] == "error" and error["error"]["type"] == "permission_error", error
