"""The activity page in a real headless Chromium (Debian's), driven by Playwright, served by real uvicorn."""

from __future__ import annotations

import base64
import contextlib
import struct
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from playwright.sync_api import Browser, Page, expect, sync_playwright

from activity.support import FUSION_CALLS, T0, make_entry
from fakes.server import serve_in_thread
from openfusion.activity import ActivityEntry
from openfusion.activity.sqlite_store import SqliteStore
from openfusion.api import activity
from openfusion.api.handlers import install as install_error_handlers

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
XSS = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
TOTAL_MS = 9000  # the fusion generation's latency: the timeline's axis

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install -y chromium)"),
]


def _entries() -> list[ActivityEntry]:
    return [
        make_entry("gen-fusion", created_at=T0, content=True, cost=0.0581, final_answer="Blue sky.\n" + XSS),
        make_entry(
            "gen-pass",
            created_at=T0 + timedelta(seconds=30),
            requested_model="openai/gpt-5",
            preset=None,
            latency_ms=800,
            calls=({"role": "passthrough", "model": "openai/gpt-5", "status": "ok", "latency_ms": 780},),
        ),
        make_entry(
            "gen-failed",
            created_at=T0 + timedelta(seconds=60),
            status="error",
            failure_reason="all_panels_failed",
            latency_ms=1000,
            calls=FUSION_CALLS[1:2],
        ),
    ]


def _app(path: Path) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = await SqliteStore.open(path)
        await store.write(_entries())
        app.state.activity_store = store
        try:
            yield
        finally:
            await store.close()

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(activity.router)
    return app


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    with serve_in_thread(_app(tmp_path / "activity.sqlite3")) as url:
        yield url


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def count_colours(page: Page, png: bytes, colours: dict[str, tuple[int, int, int]]) -> dict[str, int]:
    """How many pixels of the PNG are close to each colour, decoded by the browser itself on a blank page."""
    page.goto("about:blank")
    return page.evaluate(
        """async ([b64, colours]) => {
            const img = new Image();
            img.src = "data:image/png;base64," + b64;
            await img.decode();
            const canvas = document.createElement("canvas");
            canvas.width = img.width; canvas.height = img.height;
            const ctx = canvas.getContext("2d");
            ctx.drawImage(img, 0, 0);
            const px = ctx.getImageData(0, 0, img.width, img.height).data;
            const counts = Object.fromEntries(Object.keys(colours).map(k => [k, 0]));
            for (let i = 0; i < px.length; i += 4) {
                for (const [name, [r, g, b]] of Object.entries(colours)) {
                    if (Math.abs(px[i] - r) < 12 && Math.abs(px[i + 1] - g) < 12 && Math.abs(px[i + 2] - b) < 12) {
                        counts[name]++;
                    }
                }
            }
            return counts;
        }""",
        [base64.b64encode(png).decode(), colours],
    )


def test_list_click_timeline_and_screenshot(site: str, browser: Browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{site}/activity")
    rows = page.locator("tr.request")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_contain_text("all_panels_failed")  # newest first
    expect(rows.nth(2)).to_contain_text("fusion/quality")
    expect(rows.nth(2)).to_contain_text("$0.058100")
    expect(rows.nth(2)).to_contain_text("9 s")

    listing = page.screenshot(path=str(tmp_path / "activity-list.png"))
    assert png_size(listing) == (1400, 1000)

    page.click('a[href="/activity/gen-fusion"]')
    page.wait_for_url(f"{site}/activity/gen-fusion")

    bars = page.locator(".tl-row.call .bar")
    expect(bars).to_have_count(len(FUSION_CALLS))
    track = page.locator(".tl-row.call .tl-track").first.bounding_box()
    assert track is not None and track["width"] > 500
    px_per_ms = track["width"] / TOTAL_MS
    for index, call in enumerate(FUSION_CALLS):
        box = bars.nth(index).bounding_box()
        assert box is not None
        # Widths proportional to latency, offsets to start time, on the one shared axis (1 px rounding).
        assert box["width"] == pytest.approx(call["latency_ms"] * px_per_ms, abs=1.5)
        assert box["x"] - track["x"] == pytest.approx(call["started_ms"] * px_per_ms, abs=1.5)

    failed = page.locator(".tl-row.call.failed")
    expect(failed).to_have_count(1)
    expect(failed.locator(".fail-mark")).to_have_text("✕ error 429")
    expect(failed).to_contain_text("google/gemini-2.5-pro")
    stripes = failed.locator(".bar").evaluate("e => getComputedStyle(e).backgroundImage")
    assert "repeating-linear-gradient" in stripes

    # The untrusted answer is shown as text and never runs.
    expect(page.locator(".final-answer pre")).to_contain_text(XSS)
    assert page.evaluate("() => window.pwned") is None

    # Panel answers, analysis and final answer side by side.
    columns = [
        page.locator(f".content > section.{name}").bounding_box()
        for name in ("panel-answers", "analysis", "final-answer")
    ]
    assert all(c is not None for c in columns)
    assert [c["y"] for c in columns] == [columns[0]["y"]] * 3  # type: ignore[index]
    assert columns[0]["x"] < columns[1]["x"] < columns[2]["x"]  # type: ignore[index]
    expect(page.locator(".analysis .section")).to_have_count(5)

    full = tmp_path / "activity-detail.png"
    page.screenshot(path=str(full), full_page=True)
    timeline_png = page.locator(".timeline").screenshot(path=str(tmp_path / "activity-timeline.png"))
    width, height = png_size(full.read_bytes())
    assert width == 1400 and height >= 1000
    assert full.stat().st_size > 30_000
    t_width, t_height = png_size(timeline_png)
    assert t_width > 1000 and t_height > 150

    counts = count_colours(
        page,
        timeline_png,
        {
            "panel": (0x2F, 0x7D, 0xE1),
            "judge": (0x8A, 0x4F, 0xD8),
            "synth": (0x1C, 0x9A, 0x6C),
            "failed": (0xD2, 0x3C, 0x3C),
        },
    )
    # Bars are ~18 px tall: each colour must cover at least a visible bar's worth of pixels.
    assert counts["panel"] > 18 * 200, counts
    assert counts["judge"] > 18 * 200 and counts["synth"] > 18 * 150, counts
    assert counts["failed"] > 200, counts


ALICE, BOB = "sk-alice-browser-0123456789", "sk-bob-browser-0123456789"


@pytest.fixture
def keyed_site(tmp_path: Path) -> Iterator[str]:
    """The real app with two client keys, over a store holding one generation of each."""
    import asyncio

    from openfusion.app import create_app
    from openfusion.settings import ProviderConfig, Settings

    path = tmp_path / "keyed.sqlite3"

    async def fill() -> None:
        store = await SqliteStore.open(path)
        secret = make_entry("gen-alice", created_at=T0, key_name="alice", content=True, final_answer="Alice's plan.")
        await store.write([secret, make_entry("gen-bob", created_at=T0 + timedelta(seconds=5), key_name="bob")])
        await store.close()

    asyncio.run(fill())
    settings = Settings(
        providers=[ProviderConfig(name="none", base_url="http://127.0.0.1:9/v1", models=["*"])],
        builtin_providers=False,
        keys=[{"name": "alice", "key_env": "ALICE_KEY"}, {"name": "bob", "key_env": "BOB_KEY"}],
        activity={"path": path},
    )
    with serve_in_thread(create_app(settings, environ={"ALICE_KEY": ALICE, "BOB_KEY": BOB})) as url:
        yield url


def test_a_browser_signed_in_with_a_key_sees_only_that_keys_activity(keyed_site: str, browser: Browser) -> None:
    bob = browser.new_context(http_credentials={"username": "bob", "password": BOB})
    page = bob.new_page()
    page.goto(f"{keyed_site}/activity")
    rows = page.locator("tr.request")
    expect(rows).to_have_count(1)
    assert page.locator('a[href="/activity/gen-alice"]').count() == 0
    # Alice's page, typed in: as missing as a page that never existed, and nothing of hers on it.
    response = page.goto(f"{keyed_site}/activity/gen-alice")
    assert response is not None and response.status == 404
    assert "Alice's plan" not in page.content()
    missing = page.goto(f"{keyed_site}/activity/gen-nobody")
    assert missing is not None and missing.status == 404
    bob.close()

    alice = browser.new_context(http_credentials={"username": "alice", "password": ALICE})
    page = alice.new_page()
    page.goto(f"{keyed_site}/activity")
    expect(page.locator("tr.request")).to_have_count(1)
    page.click('a[href="/activity/gen-alice"]')
    page.wait_for_url(f"{keyed_site}/activity/gen-alice")
    expect(page.locator(".final-answer pre")).to_contain_text("Alice's plan.")
    alice.close()
