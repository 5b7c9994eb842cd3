"""The memory probe (`bench/probe/sitecustomize.py`, read by the soak across workers): on a signal it writes what the
process's memory holds in live use — Python's small-object heap and malloc's — so that a soak can tell memory a
server keeps from memory its allocators keep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

PROBE = Path(__file__).resolve().parents[2] / "bench" / "probe"

# Two readings around what a leak would keep: small Python objects (pymalloc) and large buffers (malloc); then the
# trimmed pair, after the buffers are let go.
SCRIPT = """
import os, signal, sqlite3

def read(offset):
    os.kill(os.getpid(), signal.SIGRTMIN + offset)  # handled before the next line runs

sqlite3.connect(":memory:").execute("CREATE TABLE t (x)")  # libsqlite3 loaded, its memory counted
read(3)
kept_small = [str(i) * 3 for i in range(100_000)]  # ~6 MB of small strings and a list
kept_large = [bytearray(1 << 20) for _ in range(8)]  # 8 MiB through malloc
read(3)
del kept_large
read(4)
"""


def _run(tmp_path: Path, *, probe_on: bool) -> subprocess.CompletedProcess[bytes]:
    script = tmp_path / "probed.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {k: v for k, v in os.environ.items() if k != "OPENFUSION_MEMORY"} | {"PYTHONPATH": str(PROBE)}
    if probe_on:
        env["OPENFUSION_MEMORY"] = str(tmp_path / "memory.jsonl")
    return subprocess.run([sys.executable, str(script)], env=env, check=False, timeout=60)


def _readings(tmp_path: Path) -> list[dict[str, object]]:
    assert _run(tmp_path, probe_on=True).returncode == 0
    return [json.loads(line) for line in (tmp_path / "memory.jsonl").read_text().splitlines()]


def test_readings_show_what_is_kept_by_kind(tmp_path: Path) -> None:
    before, after, collected, trimmed = _readings(tmp_path)

    assert [r["kind"] for r in (before, after, collected, trimmed)] == ["plain", "plain", "collected", "trimmed"]
    assert {r["pid"] for r in (before, after, collected, trimmed)} == {before["pid"]}
    kept_small = int(after["pymalloc_bytes"]) - int(before["pymalloc_bytes"])  # type: ignore[call-overload]
    kept_large = int(after["malloc_bytes"]) - int(before["malloc_bytes"])  # type: ignore[call-overload]
    assert 4 << 20 < kept_small < 16 << 20
    assert 8 << 20 <= kept_large < 12 << 20  # the buffers, not the small strings
    # The large buffers freed: malloc's live memory falls back, and RSS with it once trimmed.
    assert int(trimmed["malloc_bytes"]) < int(after["malloc_bytes"]) - (7 << 20)  # type: ignore[call-overload]
    assert int(trimmed["vmrss_bytes"]) < int(after["vmrss_bytes"])  # type: ignore[call-overload]
    assert int(before["sqlite_bytes"]) > 0  # type: ignore[call-overload]


def test_only_when_asked(tmp_path: Path) -> None:
    # Unasked, the signals keep their default action: the first one ends the process, which nothing reads.
    assert _run(tmp_path, probe_on=False).returncode == -(signal.SIGRTMIN + 3)
    assert not (tmp_path / "memory.jsonl").exists()
