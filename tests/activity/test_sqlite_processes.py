"""One SQLite activity file, several writer processes (the workers of `openfusion serve --workers N`)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from activity.support import make_entry
from openfusion.activity.migrations import MIGRATIONS
from openfusion.activity.sqlite_store import SqliteStore

# Opens the store (migrating a new file, like a worker starting), then writes batches as fast as it can.
WRITER = """
import asyncio, sys, time
sys.path.insert(0, {tests!r})
from activity.support import make_entry
from openfusion.activity.sqlite_store import SqliteStore

async def main(path, name, batches, size, start_at):
    time.sleep(max(0.0, start_at - time.time()))
    store = await SqliteStore.open(path)
    try:
        for batch in range(batches):
            await store.write([make_entry(f"gen-{{name}}-{{batch}}-{{i}}") for i in range(size)])
    finally:
        await store.close()

asyncio.run(main(sys.argv[2], sys.argv[1], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])))
"""
TESTS = str(Path(__file__).resolve().parents[1])


def test_writer_processes_starting_together_lose_nothing(sqlite_path: Path) -> None:
    """Six processes open a new file at the same moment (each migrating it) and write 40 batches each."""
    processes, batches, size = 6, 40, 5
    start_at = time.time() + 3  # every process has imported openfusion by then: they open the file together
    script = WRITER.format(tests=TESTS)
    arguments = [str(sqlite_path), str(batches), str(size), str(start_at)]
    writers = [
        subprocess.Popen([sys.executable, "-c", script, f"w{n}", *arguments], stderr=subprocess.PIPE, text=True)
        for n in range(processes)
    ]
    outcomes = [(writer.communicate(timeout=120)[1], writer.returncode) for writer in writers]
    assert all(code == 0 for _, code in outcomes), outcomes
    with sqlite3.connect(sqlite_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM generations").fetchone()[0] == processes * batches * size
        assert conn.execute("SELECT COUNT(DISTINCT id) FROM generations").fetchone()[0] == processes * batches * size
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == [m.version for m in MIGRATIONS]  # each step applied once


# Holds the write lock (as a backup, the sqlite3 shell or another worker's long batch would) until told.
LOCK_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


async def test_a_write_that_finds_the_database_busy_is_tried_again(
    sqlite_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await SqliteStore.open(sqlite_path, busy_timeout_s=1.0)
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOCK_HOLDER, str(sqlite_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert (await holder.stdout.readline()).strip() == b"locked"
        with caplog.at_level(logging.INFO, logger="openfusion.activity"):
            write = asyncio.create_task(store.write([make_entry("gen-after-the-lock")]))
            async with asyncio.timeout(20):
                while "activity database busy" not in caplog.text:  # the first attempt gave up after 1 s
                    assert not write.done(), write.exception()
                    await asyncio.sleep(0.02)
            holder.stdin.write(b"\n")  # the lock goes: the second attempt, waiting for it, gets it
            await write
        assert await store.get("gen-after-the-lock") is not None
    finally:
        holder.stdin.close()
        await holder.wait()
        await store.close()
