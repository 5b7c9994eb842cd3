"""Cross-site request forgery against the real server: what another site's page can make a browser send.

A page elsewhere can submit a form (urlencoded, multipart or text/plain — a text/plain form can carry
a JSON-shaped body) or `fetch` in no-cors mode with a typeless body, and the browser adds the Basic
credentials it has cached for this server. Each request below is such a request, with the headers a
browser adds (`Origin`, `Sec-Fetch-Site`).
"""

from __future__ import annotations

import base64
import gzip
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi import FastAPI

from fakes.upstream import FakeUpstream, wait_until

from .conftest import bearer, chat_body

Serve = Callable[..., AbstractContextManager[tuple[str, FastAPI]]]
KEY = "sk-client-one-0123456789"
KEYS = {"api_keys": KEY}
EVIL = "https://evil.example"
CHAT = "/v1/chat/completions"
# A text/plain form whose one field is named `{"model": …, "x": "` and valued `"}` posts valid JSON.
FORM_JSON = orjson.dumps(chat_body("fusion")).decode()[:-1] + ', "x": "="}'


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"me:{key}".encode()).decode()}


def from_another_site(**headers: str) -> dict[str, str]:
    """What a browser adds to a request another site's page makes."""
    return {"Origin": EVIL, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", **headers}


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", FORM_JSON),
        ("application/x-www-form-urlencoded", "model=fusion&messages=hi"),
        ("multipart/form-data; boundary=x", '--x\r\nContent-Disposition: form-data; name="m"\r\n\r\nfusion\r\n--x--'),
        (None, orjson.dumps(chat_body("fusion")).decode()),  # fetch(no-cors) with a Blob of no type
    ],
)
def test_a_forged_cross_site_post_starts_nothing(
    upstream: FakeUpstream, serve: Serve, content_type: str | None, body: str
) -> None:
    headers = from_another_site(**basic(KEY))
    if content_type is not None:
        headers["Content-Type"] = content_type
    with serve(KEYS) as (url, _):
        forged = httpx.post(f"{url}{CHAT}", content=body, headers=headers)
        assert forged.status_code == 403
        assert forged.json()["error"]["code"] == "cross_site_request"
        # The same body without the browser's site headers (an older browser): not declared JSON, so refused.
        older = {k: v for k, v in headers.items() if not k.startswith(("Origin", "Sec-"))}
        assert httpx.post(f"{url}{CHAT}", content=body, headers=older).status_code == 415
    assert upstream.calls == []


@pytest.mark.parametrize(
    ("content_type", "shown"),
    [
        ("application/x-www-form-urlencoded", "got 'application/x-www-form-urlencoded'"),  # curl -d's default
        ("text/plain;charset=UTF-8", "got 'text/plain'"),
        (None, "none was sent"),
        ("application/jsonx", "got 'application/jsonx'"),
    ],
)
def test_a_body_that_is_not_declared_json_gets_415(
    upstream: FakeUpstream, serve: Serve, content_type: str | None, shown: str
) -> None:
    headers = bearer(KEY) | ({"Content-Type": content_type} if content_type else {})
    with serve(KEYS) as (url, _):
        for path in (CHAT, "/api/v1/chat/completions", "/v1/responses"):
            refused = httpx.post(f"{url}{path}", content=orjson.dumps(chat_body("fusion")), headers=headers)
            assert refused.status_code == 415, path
            error = refused.json()["error"]
            assert error["type"] == "invalid_request_error" and error["code"] == "unsupported_media_type"
            assert error["message"] == f"Content-Type must be application/json ({shown})."
    assert upstream.calls == []


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate, gzip"])
def test_a_compressed_body_gets_415_not_a_json_error(upstream: FakeUpstream, serve: Serve, encoding: str) -> None:
    """A compressed body, read as it came, would get 400 "not valid JSON", which points the client at its JSON."""
    headers = {**bearer(KEY), "Content-Type": "application/json", "Content-Encoding": encoding}
    body = gzip.compress(orjson.dumps(chat_body("fake/a")))
    with serve(KEYS) as (url, _):
        for path in (CHAT, "/api/v1/chat/completions", "/v1/responses", "/v1/messages"):
            refused = httpx.post(f"{url}{path}", content=body, headers=headers)
            assert refused.status_code == 415, (path, refused.text)
            expected = f"Content-Encoding {encoding!r} is not supported: send the body uncompressed."
            if path == "/v1/messages":  # Anthropic's error shape
                assert refused.json()["error"]["message"] == expected
            else:
                assert (refused.json()["error"]["code"], refused.json()["error"]["message"]) == (
                    "unsupported_media_type",
                    expected,
                )
        # `identity` is no compression at all.
        plain = {**headers, "Content-Encoding": "identity"}
        served = httpx.post(f"{url}{CHAT}", content=orjson.dumps(chat_body("fake/a")), headers=plain)
        assert served.status_code == 200, served.text
    assert [call.model for call in upstream.calls] == ["a"]  # only the uncompressed request went through


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
def test_json_from_a_server_side_client_is_served(upstream: FakeUpstream, serve: Serve, content_type: str) -> None:
    with serve(KEYS) as (url, _):
        headers = {**bearer(KEY), "Content-Type": content_type}
        answer = httpx.post(f"{url}{CHAT}", content=orjson.dumps(chat_body("fake/a")), headers=headers)
        assert answer.status_code == 200, answer.text


def test_basic_auth_opens_the_activity_pages_and_nothing_else(
    upstream: FakeUpstream, serve: Serve, tmp_path: Path
) -> None:
    activity = {"enabled": True, "path": str(tmp_path / "activity.sqlite3")}
    with serve(KEYS, activity=activity) as (url, _):
        prompt = httpx.get(f"{url}/activity")
        assert prompt.status_code == 401 and prompt.headers["www-authenticate"] == 'Basic realm="openfusion"'
        page = httpx.get(f"{url}/activity", headers=basic(KEY))
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert httpx.get(f"{url}/activity/gen-none", headers=basic(KEY)).status_code == 404  # past the key check
        # On the API the key is a bearer token only: credentials a browser cached for the pages open nothing.
        for method, path in [("GET", "/v1/models"), ("GET", "/v1/activity"), ("POST", CHAT), ("POST", "/v1/responses")]:
            refused = httpx.request(method, f"{url}{path}", json=chat_body("fusion"), headers=basic(KEY))
            assert refused.status_code == 401, (method, path)
            assert refused.headers["www-authenticate"] == 'Bearer realm="openfusion"'
        assert httpx.get(f"{url}/v1/activity", headers=bearer(KEY)).status_code == 200
    assert upstream.calls == []


def test_a_cross_site_read_of_the_api_is_refused(upstream: FakeUpstream, serve: Serve) -> None:
    with serve(KEYS) as (url, _):
        for headers in (
            from_another_site(),
            {"Origin": EVIL},  # an older browser: no Sec-Fetch-Site, an Origin that is not this server
            {"Origin": "null"},  # a sandboxed frame or a local file
            {"Sec-Fetch-Site": "same-site", "Origin": "https://other.127.0.0.1.example"},
        ):
            refused = httpx.get(f"{url}/v1/models", headers={**headers, **bearer(KEY)})
            assert refused.status_code == 403, headers
        same_origin = {"Origin": url, "Sec-Fetch-Site": "same-origin"}
        assert httpx.get(f"{url}/v1/models", headers={**same_origin, **bearer(KEY)}).status_code == 200
        assert httpx.get(f"{url}/v1/models", headers={"Origin": url, **bearer(KEY)}).status_code == 200
        typed = {"Sec-Fetch-Site": "none", **bearer(KEY)}  # a person typing the URL
        assert httpx.get(f"{url}/v1/models", headers=typed).status_code == 200


def test_a_link_from_another_site_still_opens_the_activity_pages(serve: Serve, tmp_path: Path) -> None:
    activity = {"enabled": True, "path": str(tmp_path / "activity.sqlite3")}
    with serve(KEYS, activity=activity) as (url, _):
        navigation = from_another_site(**{"Sec-Fetch-Mode": "navigate"}, **basic(KEY))
        assert httpx.get(f"{url}/activity", headers=navigation).status_code == 200


def test_origins_allowed_by_cors_may_call_the_api(upstream: FakeUpstream, serve: Serve) -> None:
    app_origin = "https://chat.example.com"
    with serve({**KEYS, "cors": {"allow_origins": [app_origin]}}) as (url, _):
        headers = {"Origin": app_origin, "Sec-Fetch-Site": "cross-site", **bearer(KEY)}
        answer = httpx.post(f"{url}{CHAT}", json=chat_body("fake/a"), headers=headers)
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == app_origin
        evil = httpx.post(f"{url}{CHAT}", json=chat_body("fake/a"), headers={**headers, "Origin": EVIL})
        assert evil.status_code == 403
    with serve({**KEYS, "cors": {"allow_origins": ["*"]}}) as (url, _):
        answer = httpx.post(f"{url}{CHAT}", json=chat_body("fake/a"), headers={**headers, "Origin": EVIL})
        assert answer.status_code == 200


def test_responses_are_never_cached_nor_framed(upstream: FakeUpstream, serve: Serve, tmp_path: Path) -> None:
    activity = {"enabled": True, "path": str(tmp_path / "activity.sqlite3")}
    with serve(KEYS, activity=activity) as (url, _):
        answers = [
            httpx.get(f"{url}/v1/models", headers=bearer(KEY)),
            httpx.post(f"{url}{CHAT}", json=chat_body("fusion"), headers=bearer(KEY)),
            httpx.post(f"{url}{CHAT}", json=chat_body("fusion", stream=True), headers=bearer(KEY)),
            httpx.post(f"{url}{CHAT}", json=chat_body("fake/a", stream=True), headers=bearer(KEY)),
            httpx.get(f"{url}/v1/activity", headers=bearer(KEY)),
            httpx.get(f"{url}/activity", headers=basic(KEY)),
            httpx.get(f"{url}/v1/models"),  # a 401
            httpx.post(f"{url}{CHAT}", content="x", headers={"Content-Type": "text/plain"}),  # a 415
            httpx.get(f"{url}/api/v1/generation", params={"id": "gen-none"}, headers=bearer(KEY)),  # a 404
            httpx.get(f"{url}/activity/gen-none", headers=basic(KEY)),  # the missing generation's page
        ]
        generation = answers[1].headers["x-generation-id"]
        wait_until(lambda: httpx.get(f"{url}/activity/{generation}", headers=basic(KEY)).status_code == 200, 10)
        answers += [
            httpx.get(f"{url}/api/v1/generation", params={"id": generation}, headers=bearer(KEY)),
            httpx.get(f"{url}/activity/{generation}", headers=basic(KEY)),
        ]
        for answer in answers:
            assert answer.headers["cache-control"] == "no-store", answer.request.url
            assert answer.headers["x-frame-options"] == "DENY"
            assert answer.headers["x-content-type-options"] == "nosniff"
        for page in (answers[5], answers[9], answers[11]):  # the HTML pages
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"], page.request.url
        assert [answer.status_code for answer in answers[8:]] == [404, 404, 200, 200]
