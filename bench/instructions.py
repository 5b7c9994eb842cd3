"""Instructions per request: a proxy's CPU cost counted, not timed, so small changes can be compared.

    python -m bench.instructions --build before=/tmp/a/bin/openfusion --build after=/tmp/b/bin/openfusion
    python -m bench.instructions --build now=… --floor --requests 200 --concurrency 1,8

Timed CPU moves by several percent between runs on these machines (`bench.ab`'s noise); a change worth
50 µs per fusion (~2%) drowns in it. Here each server runs under valgrind's callgrind, which counts the
instructions the process executes whatever else the machine is doing. Start-up runs uninstrumented; then,
per case, `callgrind_control` switches counting on, a warm-up is sent, the counters are zeroed, N requests
are sent, and the counters are dumped: instructions per request is the dump's total over N. The fake
upstream and the load generator run natively. Under valgrind a server runs ~50× slower, so the cases use
the zero-latency `fast0` preset, and concurrency means how many requests are queued, not load. One case
streams 40 tokens 2 ms apart (`drip`), 32 more than `fast0`, each read apart from the others at c=1 (at c=8 under
valgrind several streams' tokens may share a read): (its count − `fusion stream`'s) / 32 is what a token costs. On a
busy machine the server under valgrind sometimes reads several of those tokens at once, and the count moves with the
load; two cases stream 40 and 400 tokens 10 ms apart, each read alone: (the difference) / 360 is a token's cost with
neither the request's nor the load's part. The streamed pass-through cases do the same for a relayed stream. One case
streams 400 tokens written back to back: most reads bring several, what relaying a fast stream costs.

The Responses API and Messages cases run the same three ways (non-stream, stream, 40 tokens 10 ms apart) on each path
a request on those surfaces takes: relayed natively (a provider that speaks the surface: `harness.NATIVE_PROVIDERS`),
translated to and from chat completions (a chat-only provider), and a fusion; the two relays with 400 tokens 10 ms
apart too, so that (the difference) / 360 is a relayed token's cost on each, beside the chat pass-through's. The
cases "with a client key" run on a second server per build configured with one (`keyed`): what checking a key and
masking it in relayed text cost, against the same case without.

Counts are of instructions, not time: a cache miss or a system call costs more than its count says. Use
this to compare builds on the same work, `bench.ab` for what a change does to latency.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import Bench, run_harness
from bench.load import SURFACES, agent_body
from bench.procs import Service
from bench.scenarios import (
    AUTH,
    BURST400,
    DRIP,
    DRIP40,
    DRIP400,
    FAST0,
    KEYED_AUTH,
    PASS_DRIP40,
    PASS_DRIP400,
    PASS_MODEL,
    dumps,
    floor_presets,
    main_presets,
    native,
    request_fn,
    say,
)


@dataclass(frozen=True)
class Case:
    """One measured request: its model, whether it streams, its API surface, its body, whether it carries a key."""

    model: str
    stream: bool
    surface: str = "chat"  # a key of `load.SURFACES`
    body: Callable[..., bytes] | None = None  # None: the surface's own
    keyed: bool = False  # sent with the client key to the build's keyed server

    def request(self, url: str) -> Any:
        """The request function for a server at `url`."""
        path, surface_body = SURFACES[self.surface]
        body = (self.body or surface_body)(self.model, stream=self.stream)
        headers = KEYED_AUTH if self.keyed else AUTH
        return request_fn(url + path, body, stream=self.stream, headers=headers, dialect=self.surface)


def surface_cases(surface: str) -> dict[str, Case]:
    """A surface's three cases on each of its paths (relayed natively, translated to chat completions, fusion), and a
    relay of 400 tokens 10 ms apart: (its count − the 40 tokens') / 360 is a relayed token's cost, as for chat."""
    cases = {}
    for way, plain, drip in (
        ("native", native(PASS_MODEL, surface), native(PASS_DRIP40, surface)),
        ("translated", PASS_MODEL, PASS_DRIP40),
        ("fusion", f"fusion/{FAST0.name}", f"fusion/{DRIP40.name}"),
    ):
        cases[f"{surface} {way} non-stream"] = Case(plain, False, surface)
        cases[f"{surface} {way} stream"] = Case(plain, True, surface)
        cases[f"{surface} {way} stream 40 tokens 10 ms apart"] = Case(drip, True, surface)
    for way, long in (("native", native(PASS_DRIP400, surface)), ("translated", PASS_DRIP400)):
        cases[f"{surface} {way} stream 400 tokens 10 ms apart"] = Case(long, True, surface)
    return cases


CASES = {
    "fusion stream": Case(f"fusion/{FAST0.name}", True),
    # 32 tokens more than `fusion stream`, each read apart from the others: the difference over 32 is a token's cost.
    "fusion stream 40 tokens": Case(f"fusion/{DRIP.name}", True),
    # 40 and 400 tokens 10 ms apart (`scenarios.DRIP400`): (the difference) / 360, a token's cost with less noise.
    "fusion stream 40 tokens 10 ms apart": Case(f"fusion/{DRIP40.name}", True),
    "fusion stream 400 tokens 10 ms apart": Case(f"fusion/{DRIP400.name}", True),
    # 400 tokens written back to back: the server reads several at once, what a relay of a fast stream costs.
    "fusion stream 400 tokens back to back": Case(f"fusion/{BURST400.name}", True),
    "fusion non-stream": Case(f"fusion/{FAST0.name}", False),
    # A coding agent's long conversation (~150 KB): what a request costs for the size of its context.
    "fusion non-stream 150 KB": Case(f"fusion/{FAST0.name}", False, body=agent_body),
    "pass-through non-stream": Case(PASS_MODEL, False),
    # A streamed pass-through (8 tokens), and with 40 and 400 tokens 10 ms apart: the same difference per token.
    "pass-through stream": Case(PASS_MODEL, True),
    "pass-through stream 40 tokens 10 ms apart": Case(PASS_DRIP40, True),
    "pass-through stream 400 tokens 10 ms apart": Case(PASS_DRIP400, True),
    # The Responses API and Messages: relayed natively, translated, and fusion.
    **surface_cases("responses"),
    **surface_cases("messages"),
    # With a client key: the key checked on every request, and masked in the relayed text.
    "pass-through stream 40 tokens 10 ms apart, with a client key": Case(PASS_DRIP40, True, keyed=True),
    "fusion stream 40 tokens 10 ms apart, with a client key": Case(f"fusion/{DRIP40.name}", True, keyed=True),
}
TOTALS = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def under_callgrind(service: Service, out_dir: Path) -> Service:
    """The service's command run under callgrind, counting nothing until switched on."""
    out = out_dir / f"callgrind.{service.name}.%p"
    service.argv = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--cache-sim=no",
        "--branch-sim=no",
        f"--callgrind-out-file={out}",
        *service.argv,
    ]
    return service


def control(pid: int, *flags: str) -> None:
    subprocess.run(["callgrind_control", *flags, str(pid)], check=True, capture_output=True, timeout=120)


def dumped_total(out_dir: Path, name: str, pid: int, before: set[Path]) -> int:
    """The instruction total of the dump that `callgrind_control --dump` just wrote."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = set(out_dir.glob(f"callgrind.{name}.{pid}*")) - before
        for path in new:
            found = TOTALS.search(path.read_bytes())
            if found:
                return int(found.group(1))
        time.sleep(0.2)
    raise RuntimeError(f"no callgrind dump for {name}")


async def send(fn: Any, session: Any, requests: int, concurrency: int) -> int:
    """Send `requests` requests, `concurrency` at a time; the number that failed."""
    queue = iter(range(requests))
    failed = 0

    async def worker() -> None:
        nonlocal failed
        for _ in queue:
            sample = await fn(session)
            failed += not sample.ok

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


async def run(args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(f"/tmp/openfusion-bench/instructions-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir = run_dir / "callgrind"
    out_dir.mkdir(parents=True)
    builds = dict(spec.split("=", 1) for spec in args.build)
    bench = Bench(run_dir)
    results: dict[str, Any] = {"builds": builds, "requests": args.requests, "cases": {}}
    try:
        bench.start_fake()
        cases = {
            case: spec
            for case, spec in CASES.items()
            if not args.only or any(word in case for word in args.only.split(","))
        }
        services: dict[str, Service] = {}
        keyed: dict[str, Service] = {}  # each build again, with a client key: for the keyed cases only
        wrap = functools.partial(under_callgrind, out_dir=out_dir)
        for arm, exe in builds.items():
            bench.openfusion_bin = exe
            services[arm] = bench.start_openfusion(f"openfusion_{arm}", main_presets(), wrap=wrap, ready_timeout_s=600)
            if any(spec.keyed for spec in cases.values()):
                keyed[arm] = bench.start_openfusion(
                    f"openfusion_{arm}_keyed", main_presets(), wrap=wrap, ready_timeout_s=600, keyed=True
                )
        if args.floor:
            services["floor"] = bench.start_floor("floor", floor_presets(), wrap=wrap, ready_timeout_s=600)
        session = bench.session(timeout_s=600)
        concurrencies = [int(c) for c in args.concurrency.split(",")]
        for case, spec in cases.items():
            for c in concurrencies:
                name = f"{case} c={c}"
                row = results["cases"][name] = {}
                for arm, plain in services.items():
                    # The floor arm is counted on chat completions' fusions only (no other surface, no key).
                    chat_fusion = spec.model.startswith("fusion/") and spec.surface == "chat" and not spec.keyed
                    if arm == "floor" and not chat_fusion:
                        continue
                    service = keyed[arm] if spec.keyed else plain
                    fn = spec.request(service.url)
                    control(service.pid, "--instr=on")
                    await send(fn, session, args.warmup, c)
                    control(service.pid, "--zero")
                    failed = await send(fn, session, args.requests, c)
                    await asyncio.sleep(args.settle_s)  # what the requests left to do (records, closes)
                    before = set(out_dir.glob(f"callgrind.{service.name}.{service.pid}*"))
                    control(service.pid, "--dump")
                    total = dumped_total(out_dir, service.name, service.pid, before)
                    control(service.pid, "--instr=off")
                    row[arm] = {"instructions_per_request": total / args.requests, "failed": failed}
                    per_request = total / args.requests / 1e6
                    say(f"{name:>32} {arm:>10}: {per_request:8.3f} M instructions/request, {failed} failed")
    finally:
        await bench.close_sessions()
        bench.stop_all()
    (run_dir / "instructions.json").write_bytes(dumps(results))
    say(f"wrote {run_dir / 'instructions.json'}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", action="append", required=True, help="NAME=PATH of an `openfusion` executable")
    parser.add_argument("--floor", action="store_true", help="count the floor arm (`bench/floor.py`) too")
    parser.add_argument("--requests", type=int, default=100, help="requests counted per build and case")
    parser.add_argument("--warmup", type=int, default=20, help="requests sent first, not counted")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated: requests in flight at once")
    parser.add_argument("--settle-s", type=float, default=1.0, help="wait after the last response before the dump")
    parser.add_argument("--only", default="", help="comma-separated words: run only the cases whose name has one")
    args = parser.parse_args()
    results = run_harness(run(args))
    failed = sum(arm["failed"] for row in results["cases"].values() for arm in row.values())
    if failed:
        say(f"{failed} requests failed: their counts do not measure what they name")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
