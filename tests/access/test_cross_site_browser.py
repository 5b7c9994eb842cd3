"""Cross-site request forgery in a real browser (Debian's headless Chromium, driven by Playwright).

The victim has opened the activity pages with their key as the Basic password, so the browser holds
those credentials; then they visit another site whose page posts a JSON-shaped text/plain form to
the chat route and fires a no-cors `fetch` with credentials. The browser sends both, with the
credentials: the server must start nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.sync_api import Browser, sync_playwright
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, wait_until

from .conftest import build_app, chat_body

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
KEY = "sk-client-one-0123456789"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install -y chromium)"),
]


class Recorder:
    """Wraps the app; remembers each request's method, path, headers and response status."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = app.state  # serve_in_thread reads the server settings from here
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        entry = {"method": scope["method"], "path": scope["path"], "headers": dict(scope["headers"]), "status": None}
        self.seen.append(entry)

        async def recording(message: Any) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        await self.app(scope, receive, recording)

    def posts(self) -> list[dict[str, Any]]:
        return [entry for entry in self.seen if entry["method"] == "POST" and entry["status"] is not None]


def attacker_page(target: str) -> str:
    """Another site's page: a text/plain form whose one field makes the body valid JSON, and a no-cors fetch."""
    body = orjson.dumps(chat_body("fusion")).decode()
    name, value = body[:-1] + ', "x": "', '"}'
    return f"""<!doctype html><html><body>
<form id="f" method="POST" enctype="text/plain" action="{target}">
  <input type="hidden" name='{name}' value='{value}'>
</form>
<script>
  fetch("{target}", {{method: "POST", mode: "no-cors", credentials: "include",
                      body: new Blob([{orjson.dumps(body).decode()}])}});
  setTimeout(() => document.getElementById("f").submit(), 300);
</script></body></html>"""


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def test_a_page_on_another_site_cannot_start_a_run_with_the_browsers_credentials(
    upstream: FakeUpstream, core_settings: dict[str, Any], browser: Browser, tmp_path: Path
) -> None:
    core = {**core_settings, "activity": {"enabled": True, "path": str(tmp_path / "activity.sqlite3")}}
    recorder = Recorder(build_app(core, {"api_keys": KEY}))
    with serve_in_thread(recorder) as url:
        target = f"{url}/v1/chat/completions"
        evil = Starlette(routes=[Route("/", lambda _: HTMLResponse(attacker_page(target)))])
        with serve_in_thread(evil) as evil_url:
            context = browser.new_context(http_credentials={"username": "me", "password": KEY})
            page = context.new_page()
            assert page.goto(f"{url}/activity").status == 200  # the victim's browser now holds the key
            # localhost and 127.0.0.1 are different sites to the browser.
            page.goto(evil_url.replace("127.0.0.1", "localhost"))
            wait_until(lambda: len(recorder.posts()) >= 2, timeout=20)
            context.close()
        forged = recorder.posts()
    # The attack happened: both requests reached the server from the other site, and the form (a
    # navigation) carried the credentials the browser held; the fetch's Blob body had no type at all.
    assert all(request["path"] == "/v1/chat/completions" for request in forged)
    assert all(request["headers"][b"sec-fetch-site"] == b"cross-site" for request in forged)
    form = next(request for request in forged if request["headers"].get(b"content-type") == b"text/plain")
    assert form["headers"][b"authorization"].startswith(b"Basic ")
    assert [request["status"] for request in forged] == [403, 403]
    assert upstream.calls == []
