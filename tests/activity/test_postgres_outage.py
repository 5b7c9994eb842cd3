"""PostgreSQL lost under a running server, then back: the records of the requests served meanwhile are written once it
answers, and /readyz follows it. The server reaches the real database through a link the test cuts and mends."""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg

from activity.conftest import post_chat, server_settings
from e2e.gateway import Link
from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, wait_until
from openfusion.app import create_app


def stored(postgres_url: str) -> set[str]:
    with psycopg.connect(postgres_url, connect_timeout=5) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM generations").fetchall()}


def test_records_of_requests_served_while_postgresql_is_cut_off_are_written_once_it_answers(
    fake_upstream: tuple[FakeUpstream, str], postgres_url: str, tmp_path: Path
) -> None:
    fake, upstream_url = fake_upstream
    fake.reset()
    link = Link(("127.0.0.1", 5432))
    through_link = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{link.port}")
    app = create_app(server_settings(upstream_url, tmp_path), environ={"DATABASE_URL": through_link})

    def ready(server: str) -> tuple[int, str]:
        response = httpx.get(f"{server}/readyz", timeout=10)
        return response.status_code, response.json()["checks"]["activity_store"]

    try:
        with serve_in_thread(app) as server:
            before = post_chat(server)
            assert before in stored(postgres_url)  # written before the response ended
            link.cut()
            during = [post_chat(server) for _ in range(3)]  # served all the same, each after write_timeout_s at most
            status, check = ready(server)
            assert status == 503 and check in ("unreachable", "timeout")
            assert not set(during) & stored(postgres_url)  # the fault: none of them could be written
            link.mend()
            wait_until(lambda: set(during) <= stored(postgres_url), timeout=30)
            wait_until(lambda: ready(server) == (200, "ok"), timeout=15)
            assert app.state.openfusion.activity.stats.lost == 0
    finally:
        link.cut()
