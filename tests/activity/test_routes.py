"""The activity routes through a small FastAPI app with a real SQLite store, over httpx's ASGI transport."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI

from activity.support import T0, entries_over_time, make_entry
from openfusion.activity.sqlite_store import SqliteStore
from openfusion.api import activity
from openfusion.api.handlers import install as install_error_handlers

XSS = '<script>window.pwned = 1</script><img src=x onerror="alert(1)">'


def make_app(store: SqliteStore | None) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(activity.router)
    if store is not None:
        app.state.activity_store = store
    return app


@pytest.fixture
async def client(sqlite_store: SqliteStore) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(sqlite_store))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def assert_openai_error(response: httpx.Response, status: int, *, param: str | None, code: str) -> None:
    assert response.status_code == status
    body = response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert body["error"]["param"] == param and body["error"]["code"] == code


async def test_generation_by_id(client: httpx.AsyncClient, sqlite_store: SqliteStore) -> None:
    await sqlite_store.write([make_entry("gen-1", content=True, cost=0.0581)])
    response = await client.get("/api/v1/generation", params={"id": "gen-1"})
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["id"] == "gen-1" and data["total_cost"] == 0.0581 and data["latency"] == 9000
    assert data["tokens_prompt"] == 3640 and data["tokens_completion"] == 2300
    assert data["streamed"] is True and data["cancelled"] is False
    assert len(data["calls"]) == 5 and data["calls"][1]["upstream_status"] == 429
    assert data["analysis"]["consensus"] == ["Rayleigh scattering makes the sky blue."]


async def test_unknown_cost_is_null_on_the_wire(client: httpx.AsyncClient, sqlite_store: SqliteStore) -> None:
    await sqlite_store.write([make_entry("gen-unpriced", cost=None)])
    data = (await client.get("/api/v1/generation", params={"id": "gen-unpriced"})).json()["data"]
    assert data["total_cost"] is None and data["usage"] is None


async def test_unknown_generation_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/generation", params={"id": "gen-missing"})
    assert_openai_error(response, 404, param="id", code="generation_not_found")


async def test_missing_id_is_a_400(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/api/v1/generation"), 400, param="id", code="invalid_request")


async def test_activity_pages_newest_first(client: httpx.AsyncClient, sqlite_store: SqliteStore) -> None:
    await sqlite_store.write(entries_over_time(5))
    seen: list[str] = []
    params: dict[str, str] = {"limit": "2"}
    for _ in range(5):
        body = (await client.get("/v1/activity", params=params)).json()
        assert body["object"] == "list"
        seen += [g["id"] for g in body["data"]]
        if not body["has_more"]:
            assert body["next_before"] is None
            break
        params = {"limit": "2", "before": body["next_before"]}
    assert seen == ["gen-004", "gen-003", "gen-002", "gen-001", "gen-000"]


async def test_activity_default_limit(client: httpx.AsyncClient, sqlite_store: SqliteStore) -> None:
    await sqlite_store.write(entries_over_time(60, step=timedelta(milliseconds=10)))
    body = (await client.get("/v1/activity")).json()
    assert len(body["data"]) == activity.DEFAULT_LIMIT and body["has_more"] is True


@pytest.mark.parametrize("limit", ["0", "201", "-3", "ten", "1.5"])
async def test_bad_limit_is_a_400(client: httpx.AsyncClient, limit: str) -> None:
    response = await client.get("/v1/activity", params={"limit": limit})
    assert_openai_error(response, 400, param="limit", code="invalid_request")


async def test_limit_bounds_are_inclusive(client: httpx.AsyncClient) -> None:
    for limit in ("1", "200"):
        assert (await client.get("/v1/activity", params={"limit": limit})).status_code == 200


async def test_unknown_cursor_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/activity", params={"before": "gen-nope"})
    assert_openai_error(response, 400, param="before", code="invalid_cursor")


async def test_without_a_store_the_routes_are_404() -> None:
    transport = httpx.ASGITransport(app=make_app(None))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        assert_openai_error(await http.get("/v1/activity"), 404, param=None, code="not_found")
        assert (await http.get("/activity")).status_code == 404


async def test_a_store_outage_is_a_503(client: httpx.AsyncClient, sqlite_store: SqliteStore) -> None:
    await sqlite_store.close()
    response = await client.get("/v1/activity")
    assert_openai_error(response, 503, param=None, code="activity_store_unavailable")


async def test_list_page(client: httpx.AsyncClient, sqlite_store: SqliteStore) -> None:
    await sqlite_store.write(
        [
            make_entry("gen-a", created_at=T0, cost=0.0123),
            make_entry(
                "gen-b", created_at=T0 + timedelta(seconds=5), status="error", failure_reason="all_panels_failed"
            ),
        ]
    )
    response = await client.get("/activity")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "script-src" not in response.headers["content-security-policy"]  # default-src 'none': no script at all
    html = response.text
    assert re.findall(r'href="/activity/(gen-[ab])"', html) == ["gen-b", "gen-a"]
    assert "$0.012300" in html and "unknown" in html  # gen-b's cost is unknown, not $0
    assert "all_panels_failed" in html and "2026-11-01 12:00:05 UTC" in html


async def test_list_page_links_to_older_requests(client: httpx.AsyncClient, sqlite_store: SqliteStore) -> None:
    await sqlite_store.write(entries_over_time(3))
    html = (await client.get("/activity", params={"limit": "2"})).text
    assert 'href="/activity?before=gen-001"' in html


async def test_detail_page_escapes_untrusted_content(client: httpx.AsyncClient, sqlite_store: SqliteStore) -> None:
    entry = make_entry("gen-xss", content=True, final_answer=XSS, requested_model="fusion/<b>x</b>")
    await sqlite_store.write([entry])
    html = (await client.get("/activity/gen-xss")).text
    assert "<script>window.pwned" not in html and "<img src=x" not in html and "<b>x</b>" not in html
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in html
    assert html.count('class="tl-row call') == 5 and html.count("tl-row call failed") == 1
    for title in ("Consensus", "Contradictions", "Partial coverage", "Unique insights", "Blind spots"):
        assert f"<h3>{title}</h3>" in html


async def test_detail_page_without_content_says_so(client: httpx.AsyncClient, sqlite_store: SqliteStore) -> None:
    await sqlite_store.write([make_entry("gen-meta")])
    html = (await client.get("/activity/gen-meta")).text
    assert "Content is not stored" in html and 'class="content"' not in html


async def test_detail_page_for_an_unknown_id_is_a_404_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/activity/gen-<i>nope&")
    assert response.status_code == 404 and response.headers["content-type"].startswith("text/html")
    assert "gen-&lt;i&gt;nope&amp;" in response.text
