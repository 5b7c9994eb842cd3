"""The first-use probe (`bench/probe/sitecustomize.py`, read by tests/e2e/test_first_requests.py): on a signal it writes
the modules imported and the files opened since the previous one, and records nothing before the first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

PROBE = Path(__file__).resolve().parents[2] / "bench" / "probe"

SCRIPT = """
import os, signal, sys

def report():
    os.kill(os.getpid(), signal.SIGRTMIN + 5)  # handled before the next line runs

open(sys.argv[1]).close()  # before the first signal: not recorded
report()
import colorsys  # a module nothing imported yet
open(sys.argv[1]).close()
report()
report()
"""


def test_imports_and_opens_between_signals(tmp_path: Path) -> None:
    script, opened, out = tmp_path / "probed.py", tmp_path / "opened.txt", tmp_path / "first_use.jsonl"
    script.write_text(textwrap.dedent(SCRIPT))
    opened.write_text("x")
    env = {k: v for k, v in os.environ.items() if k != "OPENFUSION_FIRST_USE"}
    env |= {"PYTHONPATH": str(PROBE), "OPENFUSION_FIRST_USE": str(out)}
    assert subprocess.run([sys.executable, str(script), str(opened)], env=env, check=False, timeout=60).returncode == 0

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(row["armed"], row["import"]) for row in rows] == [(False, []), (True, ["colorsys"]), (True, [])]
    # The import opened its cached bytecode too.
    assert [[name for name in row["open"] if "colorsys" not in name] for row in rows] == [[], [str(opened)], []]
    assert {row["pid"] for row in rows} != {os.getpid()}


def test_only_when_asked(tmp_path: Path) -> None:
    script = tmp_path / "probed.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGRTMIN + 5)\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENFUSION_FIRST_USE"} | {"PYTHONPATH": str(PROBE)}
    # Unasked, the signal keeps its default action: it ends the process.
    assert subprocess.run([sys.executable, str(script)], env=env, check=False, timeout=60).returncode == -(
        signal.SIGRTMIN + 5
    )
