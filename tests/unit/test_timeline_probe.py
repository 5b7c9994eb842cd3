"""The timeline probe (`bench/probe/sitecustomize.py`, used by `python -m bench.timeline`): in a process named
`openfusion` it marks entry, exit and yields of the functions it is told, also where callers imported them by name."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

PROBE = Path(__file__).resolve().parents[2] / "bench" / "probe"

PROBED = """
import asyncio

def plain(x):
    return x + 1

async def waits():
    await asyncio.sleep(0)
    return 2

async def tokens():
    yield "a"
    yield "b"

class Box:
    def open(self):
        return "opened"
"""

# Runs as a file named `openfusion`, as the server does; the names are bound by `from … import` after the probe
# is installed, as openfusion's modules bind each other's.
SCRIPT = """
import asyncio, os, signal
from probed import Box, plain, tokens, waits

async def main():
    assert plain(1) == 2
    assert await waits() == 2
    assert [t async for t in tokens()] == ["a", "b"]
    assert Box().open() == "opened"

asyncio.run(main())
if signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL:  # the probe is installed: it writes its marks
    os.kill(os.getpid(), signal.SIGUSR1)
"""


def _run(tmp_path: Path, name: str, *, probe_on: bool = True) -> Path:
    (tmp_path / "probed.py").write_text(textwrap.dedent(PROBED))
    script = tmp_path / name
    script.write_text(textwrap.dedent(SCRIPT))
    marks = tmp_path / "marks.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROBE), str(tmp_path)])}
    if probe_on:
        env["OPENFUSION_TIMELINE"] = str(marks)
        env["OPENFUSION_TIMELINE_TARGETS"] = "probed:plain probed:waits probed:tokens probed:Box.open probed:missing"
    subprocess.run([sys.executable, str(script)], env=env, check=True, timeout=60)
    return marks


def test_marks_entry_exit_and_yields_in_order(tmp_path: Path) -> None:
    marks = _run(tmp_path, "openfusion")
    lines = marks.read_text().splitlines()
    labels = [line.split(" ", 1)[1] for line in lines]
    assert labels == [
        "plain >",
        "plain <",
        "waits >",
        "waits <",
        "tokens >",
        "tokens yields str",
        "tokens yields str",
        "tokens <",
        "Box.open >",
        "Box.open <",
    ]
    times = [int(line.split(" ", 1)[0]) for line in lines]
    assert times == sorted(times)


def test_only_in_a_process_named_openfusion_and_only_when_asked(tmp_path: Path) -> None:
    assert not _run(tmp_path, "other").exists()
    assert not _run(tmp_path, "openfusion", probe_on=False).exists()
