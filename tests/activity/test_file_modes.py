"""The SQLite activity file holds prompts and answers: it and its -wal/-shm files are readable by their owner only."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, Script, wait_until
from openfusion.app import create_app
from openfusion.settings import ProviderConfig, Settings


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The usual umask (022): files are world-readable unless whoever creates them says otherwise."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _serve_and_ask(fake_upstream: tuple[FakeUpstream, str], tmp_path: Path, database: Path) -> None:
    fake, upstream_url = fake_upstream
    fake.reset()
    fake.script("judge", Script(content='{"consensus": []}'))
    provider = ProviderConfig(name="fake", base_url=f"{upstream_url}/v1", models=["fake/*"], strip_prefix=True)
    presets = tmp_path / "presets"
    presets.mkdir(exist_ok=True)
    (presets / "solo.toml").write_text('analysis_models = ["fake/a"]\nmodel = "fake/judge"\n')
    settings = Settings(
        providers=[provider],
        builtin_providers=False,
        presets_dir=presets,
        default_preset="solo",
        activity={"path": database},
    )
    with serve_in_thread(create_app(settings, environ={})) as url:
        body = {"model": "fusion", "messages": [{"role": "user", "content": "Hi"}]}
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).status_code == 200
        # The answer is recorded: the file, its write-ahead log and shared memory all exist now.
        wait_until(lambda: bool(httpx.get(f"{url}/v1/activity").json()["data"]), timeout=10)
        files = [database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")]
        assert all(path.exists() for path in files)
        modes = {path.name: oct(_mode(path)) for path in files}
    assert modes == {path.name: "0o600" for path in files}


def test_a_new_activity_file_is_private(
    fake_upstream: tuple[FakeUpstream, str], tmp_path: Path, permissive_umask: None
) -> None:
    database = tmp_path / "state" / "activity.sqlite3"
    _serve_and_ask(fake_upstream, tmp_path, database)
    assert _mode(database.parent) == 0o700  # the folder openfusion created too


def test_an_existing_world_readable_activity_file_is_made_private(
    fake_upstream: tuple[FakeUpstream, str], tmp_path: Path, permissive_umask: None
) -> None:
    database = tmp_path / "activity.sqlite3"
    with sqlite3.connect(database) as conn:  # made by an older version, world-readable
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE leftover (x)")
    assert _mode(database) == 0o644
    _serve_and_ask(fake_upstream, tmp_path, database)
