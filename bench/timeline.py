"""One c=1 fusion request, function by function: where each microsecond of its critical path goes.

    python -m bench.timeline [--requests 30] [--stream] [--agent] [--also MODULE:QUALNAME ...] [--openfusion-bin PATH]

Starts the fake upstream and openfusion (`bench3`: panel 100/150/200 ms, judge 50 ms, synthesizer 20
tokens 5 ms apart; `--agent` sends a coding agent's ~150 KB request, `bench.load.agent_body`), with the
probe (`bench/probe/sitecustomize.py`) marking entry and exit of the functions in `TARGETS` in the server.
Sends the requests one at a time, then prints the timeline of the one whose total time is the median: each
mark's time from the client's send, and the gap since the mark before it. Gaps of more than 2 ms are
upstream waits. `bench.ab --breakdown` gives the segments' medians beside another build or the floor arm;
this shows what is inside them. Marks cost ~1 µs each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from pathlib import Path

from bench.harness import REPO, Bench, run_harness
from bench.load import agent_body, chat_body
from bench.scenarios import AUTH, BENCH3, main_presets, request_fn, say

# (module, qualified name): the server's path through a fusion request, edge to upstream and back.
TARGETS = [
    ("openfusion.api.server_protocol", "LimitedConnection.data_received"),
    ("openfusion.api.server_protocol", "CoalescedWrites.flush"),
    ("openfusion.api.body", "parse_chat_request"),
    ("openfusion.api.dispatch", "open_exchange"),
    ("openfusion.pipeline.plan", "plan_fusion"),
    ("openfusion.pipeline.reach", "reach_of"),
    ("openfusion.api.access", "admit"),
    ("openfusion.pipeline.budget", "priced"),
    ("openfusion.api.ledger", "Ledger.__init__"),
    ("openfusion.api.ledger", "Ledger._close"),
    ("openfusion.api.fusion_response", "complete_fusion"),
    ("openfusion.api.fusion_response", "stream_fusion"),
    ("openfusion.pipeline.run", "FusionRun.panel"),
    ("openfusion.pipeline.run", "FusionRun.judge"),
    ("openfusion.pipeline.run", "FusionRun.synthesize"),
    ("openfusion.pipeline.run", "FusionRun.remember_turn"),
    ("openfusion.pipeline.prompts", "judge_messages"),
    ("openfusion.pipeline.prompts", "synthesis_messages"),
    ("openfusion.pipeline.analysis", "parse_analysis"),
    ("openfusion.pipeline.report", "fusion_report"),
    ("openfusion.upstream.trace", "RequestTrace.bill"),
    ("openfusion.upstream.client", "UpstreamClient.complete"),
    ("openfusion.upstream.client", "UpstreamClient._send"),
    ("openfusion.upstream.transport", "AiohttpTransport.handle_async_request"),
    ("aiohttp.client_reqrep", "ClientRequest.send"),
    ("aiohttp.client_reqrep", "ClientRequest.write_bytes"),
    ("aiohttp.client_proto", "ResponseHandler.data_received"),
]
PROBE = REPO / "bench" / "probe"
WAIT_NS = 2_000_000  # a gap longer than this is an upstream wait


async def run(args: argparse.Namespace) -> None:
    run_dir = Path(f"/tmp/openfusion-bench/timeline-{time.strftime('%Y%m%d-%H%M%S')}")
    marks_file = run_dir / "marks.txt"
    bench = Bench(run_dir)
    if args.openfusion_bin:
        bench.openfusion_bin = args.openfusion_bin
    sent: list[tuple[int, int]] = []
    try:
        bench.start_fake()
        probe = {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROBE), os.environ.get("PYTHONPATH")])),
            "OPENFUSION_TIMELINE": str(marks_file),
            "OPENFUSION_TIMELINE_TARGETS": " ".join([f"{m}:{n}" for m, n in TARGETS] + args.also),
        }
        service = bench.start_openfusion("openfusion", main_presets(), env=probe)
        body = (agent_body if args.agent else chat_body)(f"fusion/{BENCH3.name}", stream=args.stream)
        send = request_fn(service.url + "/v1/chat/completions", body, stream=args.stream, headers=AUTH)
        session = bench.session()
        for i in range(args.requests + 2):  # two unrecorded: the process wakes up
            started = time.perf_counter_ns()
            sample = await send(session)
            if not sample.ok:
                raise SystemExit(f"request {i} failed: {sample}")
            if i >= 2:
                sent.append((started, time.perf_counter_ns()))
        os.kill(service.pid, signal.SIGUSR1)
        for _ in range(200):  # the probe writes its file from the server's signal handler
            if marks_file.exists():
                break
            await asyncio.sleep(0.05)
    finally:
        await bench.close_sessions()
        bench.stop_all()
    marks = [(int(t), label) for t, label in (line.split(" ", 1) for line in marks_file.read_text().splitlines())]
    totals = [end - start for start, end in sent]
    median = statistics.median_low(totals)
    start, end = sent[totals.index(median)]
    critical_ms = BENCH3.critical_s * 1000
    say(f"{'streamed' if args.stream else 'non-streamed'} bench3 fusion, c=1: the request of median total time")
    say(f"({median / 1e6:.2f} ms, {median / 1e6 - critical_ms:.2f} ms over the upstreams' {critical_ms:.0f} ms)\n")
    say("      ms    gap µs  mark")
    previous = start
    for t, label in _folded([(t, label) for t, label in marks if start <= t <= end]):
        say(f"{(t - start) / 1e6:8.3f} {(t - previous) / 1e3:9.0f}  {label}")
        previous = t
    say(f"{(end - start) / 1e6:8.3f} {(end - previous) / 1e3:9.0f}  the client has the whole response")
    say(f"\nmarks of every request: {marks_file}")


def _folded(marks: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The marks, each run of identical stretches between upstream waits (a streamed answer's tokens) cut to
    its first and last stretch."""
    blocks: list[list[tuple[int, str]]] = []
    for mark in marks:
        if not blocks or mark[0] - blocks[-1][-1][0] > WAIT_NS:
            blocks.append([])
        blocks[-1].append(mark)
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(blocks):
        j = i + 1
        while j < len(blocks) and [m[1] for m in blocks[j]] == [m[1] for m in blocks[i]]:
            j += 1
        out += blocks[i]
        if j - i > 2:
            out.append((blocks[j - 2][-1][0], f"… {j - i - 2} more stretches like the one above"))
        if j - i > 1:
            out += blocks[j - 1]
        i = j
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--agent", action="store_true", help="send a coding agent's ~150 KB request (agent_body)")
    parser.add_argument(
        "--also", action="append", default=[], metavar="MODULE:NAME", help="mark this function too (repeatable)"
    )
    parser.add_argument("--openfusion-bin", default="", help="that `openfusion` executable (default: next to python)")
    run_harness(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
