"""PostgreSQL lost under a running server, then back: the records of the requests served meanwhile are written once it
answers, and /readyz follows it. The server reaches the real database through a link the test cuts and mends."""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg

from e2e.gateway import Link
from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, wait_until
from openfusion.app import create_app
from openfusion.settings import ProviderConfig, Settings


def stored(postgres_url: str) -> set[str]:
    with psycopg.connect(postgres_url, connect_timeout=5) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM generations").fetchall()}


def test_records_of_requests_served_while_postgresql_is_cut_off_are_written_once_it_answers(
    fake_upstream: tuple[FakeUpstream, str], postgres_url: str, tmp_path: Path
) -> None:
    fake, upstream_url = fake_upstream
    fake.reset()
    link = Link(("127.0.0.1", 5432))
    provider = ProviderConfig(name="fake", base_url=f"{upstream_url}/v1", models=["fake/*"], strip_prefix=True)
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "solo.toml").write_text('analysis_models = ["fake/a"]\nmodel = "fake/judge"\n')
    # A response waits for its record (record_before_end, on with PostgreSQL) for at most write_timeout_s.
    activity = {"write_timeout_s": 1.0, "flush_interval_s": 0.05}
    settings = Settings(
        providers=[provider], builtin_providers=False, presets_dir=presets, default_preset="solo", activity=activity
    )
    through_link = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{link.port}")
    app = create_app(settings, environ={"DATABASE_URL": through_link})

    def post(server: str) -> str:
        body = {"model": "fake/a", "messages": [{"role": "user", "content": "Hi"}]}
        response = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=30)
        assert response.status_code == 200, response.text
        return response.headers["x-generation-id"]

    def ready(server: str) -> tuple[int, str]:
        response = httpx.get(f"{server}/readyz", timeout=10)
        return response.status_code, response.json()["checks"]["activity_store"]

    try:
        with serve_in_thread(app) as server:
            before = post(server)
            assert before in stored(postgres_url)  # written before the response ended
            link.cut()
            during = [post(server) for _ in range(3)]  # served all the same, each after write_timeout_s at most
            status, check = ready(server)
            assert status == 503 and check in ("unreachable", "timeout")
            assert not set(during) & stored(postgres_url)  # the fault: none of them could be written
            link.mend()
            wait_until(lambda: set(during) <= stored(postgres_url), timeout=30)
            wait_until(lambda: ready(server) == (200, "ok"), timeout=15)
            assert app.state.openfusion.activity.stats.lost == 0
    finally:
        link.cut()
