"""Upstreams that echo a key: it never reaches a client, the `fusion` object, the activity store, a page or a log."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, Script
from openfusion.app import create_app
from openfusion.settings import Settings

PROVIDER_KEY = "sk-proj-Q7vX2mN9pL4kR8sT1wY6zA3bC5dE0fGh"
SEARCH_KEY = "BSAk2x9Lq7Vn4Zp8Rt1Wy6"
CLIENT_KEY = "of-client-d41d8cd98f00b204e980"
ADMIN_KEY = "of-admin-9e107d9d372bb6826bd8"  # OPENFUSION_ADMIN_KEYS: the most powerful key, masked like the others
ENVIRON = {"FAKE_KEY": PROVIDER_KEY, "BRAVE_API_KEY": SEARCH_KEY}
CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}
# The shortest prefix of each that gives anything away (after `sk-proj-` and `of-client-`, their public heads).
LEAKS = (PROVIDER_KEY[:12], SEARCH_KEY[:8], CLIENT_KEY[:14], ADMIN_KEY[:13])
CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]


def assert_clean(text: str) -> None:
    """No key, nor any prefix of one long enough to matter, in `text`."""
    assert not [leak for leak in LEAKS if leak in text], text[:2000]


def generation(url: str, generation_id: str) -> dict[str, Any]:
    """The recorded generation, read with the client key (the writer batches off the hot path: wait for it)."""
    deadline = time.monotonic() + 10
    while (response := httpx.get(f"{url}/api/v1/generation", params={"id": generation_id}, headers=CLIENT)).is_error:
        assert response.status_code == 404 and time.monotonic() < deadline, response.text
        time.sleep(0.05)
    return dict(response.json()["data"])


def echo_error(message: str, status: int = 401) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "authentication_error", "code": status}})


def long_echo(offset: int = 14) -> str:
    """An error message whose 1,000-character cut falls `offset` characters into the provider key."""
    return "x" * (1000 - offset) + PROVIDER_KEY + " was refused"


@pytest.fixture
def masked_server(
    upstream: FakeUpstream, make_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[Callable[..., Any]]:
    """openfusion with a provider key, a search key, a client key and an admin key, recording content in SQLite."""

    @contextmanager
    def start() -> Iterator[str]:
        settings = make_settings(
            api_keys=CLIENT_KEY,
            admin_keys=ADMIN_KEY,
            research={"search": {"backend": "brave"}},
            activity={"path": tmp_path / "activity.sqlite3", "store_content": True, "flush_interval_s": 0.05},
        )
        with serve_in_thread(create_app(settings, environ=ENVIRON)) as url:
            yield url

    yield start


_CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": []}
PASS_THROUGH_ECHOES = {
    # A 200 whose body is an error object quoting the key.
    "ok200": (Script(raw_body=echo_error(f"Invalid API key: {PROVIDER_KEY}", 200)), False, "Invalid API key: ***"),
    # An error quoting the admin key, which reaches an ordinary key's client unless masked.
    "admin": (Script(status=401, error_message=f"Incorrect API key provided: {ADMIN_KEY}"), False, "provided: ***"),
    # An error body long enough that the 1,000-character cut of its message falls inside the key.
    "long": (Script(status=401, error_message=long_echo()), False, "x*** was ref"),
    # A stream that sends a chunk, then an error chunk quoting the key.
    "midstream": (
        Script(
            raw_body=b"data: "
            + orjson.dumps({**_CHUNK, "choices": [{"index": 0, "delta": {"content": "Hel"}}]})
            + b"\n\ndata: "
            + echo_error(f"key {PROVIDER_KEY} was revoked mid-stream")
            + b"\n\n"
        ),
        True,
        "key *** was revoked",
    ),
}


@pytest.mark.parametrize("case", list(PASS_THROUGH_ECHOES))
def test_a_pass_through_echo_is_masked_in_the_body_the_record_the_page_and_logs(
    upstream: FakeUpstream, masked_server: Any, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    script, stream, expected = PASS_THROUGH_ECHOES[case]
    upstream.script(case, script)

    with caplog.at_level(logging.INFO), masked_server() as url:
        body = {"model": f"fake/{case}", "messages": HI, "stream": stream}
        response = httpx.post(f"{url}{CHAT}", json=body, headers=CLIENT)
        record = generation(url, response.headers["x-generation-id"])
        page = httpx.get(f"{url}/activity/{response.headers['x-generation-id']}", headers=CLIENT).text

    assert upstream.calls_for(case)[0].headers["authorization"] == f"Bearer {PROVIDER_KEY}"  # the key was sent
    assert expected in response.text
    if case == "long":  # the call's error in the record: masked, then cut
        assert record["calls"][0]["upstream_status"] == 401 and "x*** was ref" in record["calls"][0]["error"]
    for text in (response.text, json.dumps(record), page, caplog.text):
        assert_clean(text)


def test_a_fusion_panel_echo_is_masked_in_the_fusion_object_records_and_answer(
    upstream: FakeUpstream, masked_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.script("a", Script(raw_body=echo_error(f"Incorrect API key provided: {PROVIDER_KEY}", 200)))
    upstream.script("b", Script(status=403, error_message=long_echo(offset=20)))
    upstream.script("c", Script(content=f"Keys seen: {SEARCH_KEY} and {CLIENT_KEY} and {ADMIN_KEY}."))
    upstream.script("synth", Script(content=f"Final, quoting {PROVIDER_KEY}."))
    body = {"model": "fusion/trio", "messages": HI, "plugins": [{"id": "fusion", "expose": True}]}

    with caplog.at_level(logging.INFO), masked_server() as url:
        response = httpx.post(f"{url}{CHAT}", json=body, headers=CLIENT, timeout=30)
        record = generation(url, response.headers["x-generation-id"])
        page = httpx.get(f"{url}/activity/{response.headers['x-generation-id']}", headers=CLIENT).text

    assert response.status_code == 200, response.text
    fusion = response.json()["fusion"]
    panel = {entry["model"]: entry for entry in fusion["panel"]}
    assert panel["fake/a"]["status"] == "error" and panel["fake/a"]["error"]["message"].endswith("provided: ***")
    assert "x*** was ref" in panel["fake/b"]["error"]["message"]
    assert fusion["responses"] == [{"model": "fake/c", "content": "Keys seen: *** and *** and ***."}]
    assert response.json()["choices"][0]["message"]["content"] == "Final, quoting ***."
    # The judge and the synthesizer read the panel's answers masked too.
    assert_clean(json.dumps([call.body for call in upstream.calls_for("judge") + upstream.calls_for("synth")]))
    for text in (response.text, json.dumps(record), page, caplog.text):
        assert_clean(text)


def test_a_streamed_fusion_whose_synthesizer_echoes_the_key_mid_stream(
    upstream: FakeUpstream, masked_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "synth", "choices": []}
    stream = (
        b"data: " + orjson.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": "Partial"}}]}) + b"\n\n"
        b"data: " + echo_error(long_echo(offset=30), 401) + b"\n\n"
    )
    upstream.script("synth", Script(raw_body=stream))

    with caplog.at_level(logging.INFO), masked_server() as url:
        response = httpx.post(
            f"{url}{CHAT}", json={"model": "fusion/trio", "messages": HI, "stream": True}, headers=CLIENT, timeout=30
        )
        record = generation(url, response.headers["x-generation-id"])

    assert response.status_code == 200 and "Partial" in response.text
    errors = [json.loads(line[6:])["error"] for line in response.text.splitlines() if '"error"' in line]
    assert errors and "***" in errors[-1]["message"]
    synth_call = next(call for call in record["calls"] if call["role"] == "synthesizer")
    assert synth_call["status"] == "error" and "***" in synth_call["error"]
    for text in (response.text, json.dumps(record), caplog.text):
        assert_clean(text)


GATEWAY_KEY = "gwkey-SECRET-0123456789abcdef"  # a company gateway's credential, sent as a configured header


def test_a_credential_in_a_providers_headers_is_masked_like_its_key(
    upstream: FakeUpstream, make_settings: Callable[..., Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Gateways, Azure (`api-key`) and Cloudflare (`cf-aig-authorization`) take their credential in a header of
    their own, configured in `[[providers]] headers`: an upstream echoing it shows `***`; other headers stay."""
    [fake] = make_settings().providers
    headers = {"X-Gateway-Key": GATEWAY_KEY, "cf-aig-authorization": "Bearer cfut-0123456789abcdef", "X-Title": "CI"}
    settings = make_settings(
        providers=[fake.model_copy(update={"headers": headers})],
        api_keys=CLIENT_KEY,
        activity={"path": tmp_path / "activity.sqlite3", "store_content": True, "flush_interval_s": 0.05},
    )
    echoed = f"got X-Gateway-Key: {GATEWAY_KEY}, cf-aig-authorization: Bearer cfut-0123456789abcdef, X-Title: CI"
    upstream.script("echo", Script(status=401, error_message=echoed))
    with caplog.at_level(logging.INFO), serve_in_thread(create_app(settings, environ=ENVIRON)) as url:
        response = httpx.post(f"{url}{CHAT}", json={"model": "fake/echo", "messages": HI}, headers=CLIENT)
        record = generation(url, response.headers["x-generation-id"])

    sent = upstream.calls_for("echo")[0].headers
    assert sent["x-gateway-key"] == GATEWAY_KEY  # the credential was sent
    assert "X-Gateway-Key: ***, cf-aig-authorization: Bearer ***, X-Title: CI" in response.text
    for text in (response.text, json.dumps(record), caplog.text):
        assert GATEWAY_KEY[:12] not in text and "cfut-0123" not in text, text[:2000]
