"""What a held fusion stream keeps in the Python heap, allocation site by allocation site.

    python -m bench.heap [--streams 300] [--arm openfusion|floor] [--frames 12] [--top 40]

The memory scenario measures RSS per in-flight stream; this says what it is made of. It starts the fake
upstream and the arm with the probe (`bench/probe/sitecustomize.py`) tracing allocations (tracemalloc), warms
the arm up, takes a snapshot, holds `--streams` fusion streams inside synthesis, takes another, and prints what
grew per stream: by package, and by the last frame of openfusion (or of the floor arm) that led to the allocation
and the line that made it. tracemalloc slows the process several times over, so the held streams' synthesizer
sends a token a second (not every 100 ms as in the memory scenario): a server that falls behind would pile the
tokens up in its queues and show them as held. What tracemalloc sees is the Python heap: memory that C code
allocates itself (the event loop's handles, the HTTP parsers), and the allocator's fragmentation, are in RSS only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.harness import REPO, Bench, run_harness
from bench.load import chat_body
from bench.scenarios import FAST0, Fusion, floor_presets, hold_streams, package_of, request_fn, say, source_path

PROBE = REPO / "bench" / "probe"
HOLD = Fusion("hold", ("fake/lat-0", "fake/lat-0", "fake/lat-0"), "fake/lat-0", "fake/lat-0-tok-1200-every-1000")
OWN = ("/openfusion/", "/bench/floor.py")  # the frames that are the arm's own code
# Tracing every allocation from the first import slows start-up several times over: on a busy machine past the
# harness's usual 30 s.
READY_S = 180.0


async def snapshot(pid: int, directory: Path) -> Path:
    """Ask the probe for a snapshot and wait until it is written."""
    done = directory / "done"
    before = done.read_text() if done.exists() else ""
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if done.exists() and len(done.read_text()) > len(before):
            return directory / f"snapshot-{len(before)}.pickle"
        await asyncio.sleep(0.1)
    raise SystemExit("the probe wrote no snapshot within 120 s")


def _at(frame: tracemalloc.Frame) -> str:
    return f"{source_path(frame.filename)}:{frame.lineno}"


def _site(trace: tracemalloc.Trace) -> tuple[str, str]:
    frames = list(trace.traceback)  # oldest first
    own = [f for f in frames if any(part in f.filename for part in OWN)]
    return (_at(own[-1]) if own else "-", _at(frames[-1]))


def _package(trace: tracemalloc.Trace) -> str:
    return package_of(trace.traceback[-1].filename)


def grown(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, key: Any) -> list[tuple[Any, int, int]]:
    """(key, bytes, blocks) that `after` holds beyond `before`, largest first."""

    def totals(traces: Iterable[tracemalloc.Trace]) -> tuple[Counter[Any], Counter[Any]]:
        size: Counter[Any] = Counter()
        count: Counter[Any] = Counter()
        for trace in traces:
            k = key(trace)
            size[k] += trace.size
            count[k] += 1
        return size, count

    size_a, count_a = totals(before.traces)
    size_b, count_b = totals(after.traces)
    rows = [(k, size_b[k] - size_a[k], count_b[k] - count_a[k]) for k in size_b.keys() | size_a.keys()]
    return sorted(rows, key=lambda row: -row[1])


async def run(args: argparse.Namespace) -> None:
    run_dir = Path(f"/tmp/openfusion-bench/heap-{time.strftime('%Y%m%d-%H%M%S')}")
    directory = run_dir / "snapshots"
    directory.mkdir(parents=True)
    bench = Bench(run_dir)
    if args.openfusion_bin:
        bench.openfusion_bin = args.openfusion_bin
    probe = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROBE), os.environ.get("PYTHONPATH")])),
        "OPENFUSION_HEAP": str(directory),
        "OPENFUSION_HEAP_FRAMES": str(args.frames),
    }
    try:
        bench.start_fake()
        if args.arm == "floor":
            service = bench.start_floor(
                "floor", {**floor_presets(), HOLD.name: HOLD.floor()}, env=probe, ready_timeout_s=READY_S
            )
        else:
            presets = {HOLD.name: HOLD.toml(), FAST0.name: FAST0.toml()}
            service = bench.start_openfusion("openfusion", presets, env=probe, ready_timeout_s=READY_S)
        url = service.url + "/v1/chat/completions"
        session = bench.session(600)
        warm = request_fn(url, chat_body(f"fusion/{FAST0.name}", stream=True), stream=True)
        await bench.measure(session, warm, concurrency=10, duration_s=30, max_requests=100)
        idle = await snapshot(service.pid, directory)
        taken: list[Path] = []

        async def at_hold() -> None:
            taken.append(await snapshot(service.pid, directory))

        body = chat_body(f"fusion/{HOLD.name}", stream=True)
        held = await hold_streams(bench, service, session, url, body, args.streams, at_hold=at_hold)
    finally:
        await bench.close_sessions()
        bench.stop_all()
    n = held["in_flight"]
    if not taken or n == 0:
        raise SystemExit(f"no stream reached synthesis: {held}")
    before, after = tracemalloc.Snapshot.load(str(idle)), tracemalloc.Snapshot.load(str(taken[0]))
    per = 1024 * n
    total = sum(t.size for t in after.traces) - sum(t.size for t in before.traces)
    say(f"{args.arm}: {n} fusion streams held inside synthesis ({held['errors'] or 'no errors'})")
    say(f"Python heap per stream: {total / per:.1f} KiB (RSS, slowed by tracing: {held['per_stream_kb']:.1f} KiB)\n")
    say("by package (KiB, blocks per stream):")
    for name, size, count in grown(before, after, _package)[:15]:
        say(f"  {size / per:7.2f} {count / n:7.1f}  {name}")
    say(f"\nby the arm's own last frame -> the allocating line (top {args.top}):")
    for (own, line), size, count in grown(before, after, _site)[: args.top]:
        say(f"  {size / per:7.2f} {count / n:7.1f}  {own}  ->  {line}")
    say(f"\nsnapshots: {directory}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--arm", choices=("openfusion", "floor"), default="openfusion")
    parser.add_argument("--frames", type=int, default=12, help="frames kept per allocation")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--openfusion-bin", help="the openfusion executable (default: the one beside this Python)")
    args = parser.parse_args()
    run_harness(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
