"""Before/after: openfusion builds side by side, interleaved, on the costs that matter most.

    python -m bench.ab --build before=/tmp/a/bin/openfusion --build after=/tmp/b/bin/openfusion [--rounds 3]
    python -m bench.ab --build off=… --build on=… --traced on   # `on` exports traces to a local collector
    python -m bench.ab --build … --build … --only nothing --breakdown 40   # where each build's c=1 time goes
    python -m bench.ab --build now=… --floor [--only c=50]   # one build beside the floor arm: the targets' ratios

For an optimisation, build one venv without and one with the change (e.g. `python -m bench
--snapshot` leaves a frozen build of the checkout in /tmp/openfusion-bench/snapshot/venv), then
run this: both instances get the same fake upstream and the same requests, round by round with the
order rotated. Prints and writes (as JSON next to the logs) CPU per request, latency and the price of
a relayed token for each. An arm named by `--traced` runs with `[tracing]` pointed at a local OTLP/HTTP
sink (`bench/collector.py`, its own process): the cost of tracing every request. The Responses API and Messages
cases (`--only responses,messages`) run each surface relayed natively, translated and as a fusion; the cases "with a
client key" (`--only "client key"`) run on a second instance of each build configured with one.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from bench.harness import REPO, Bench, aggregate, interleaved, run_harness
from bench.load import SURFACES, chat_body
from bench.procs import Service, free_port
from bench.scenarios import (
    AUTH,
    BENCH3,
    FAST0,
    KEYED_AUTH,
    PASS_MODEL,
    Fusion,
    dumps,
    floor_presets,
    main_presets,
    native,
    proxy_cpu_ms,
    request_fn,
    say,
    traced_critical_path,
)

LONG = replace(FAST0, name="fast0long", synth="fake/lat-0-tok-408")


class Case(NamedTuple):
    """One case: its requests (model, stream, surface, key), the concurrency it runs at and what it shows."""

    name: str
    preset: Fusion | str | None  # a fusion preset, a pass-through model, or None for `PASS_MODEL`
    stream: bool
    concurrency: int
    shows: str
    surface: str = "chat"  # a key of `load.SURFACES`
    keyed: bool = False  # sent with the client key, to each build's instance configured with it


def surface_cases(surface: str) -> list[Case]:
    """A surface's pass-through relayed natively and translated (non-stream, 8 and 408 tokens), and a fusion."""
    cases = []
    for way in ("native", "translated"):
        plain, short, long = (
            native(model, surface) if way == "native" else model
            for model in (PASS_MODEL, "fake/lat-0-tok-8", "fake/lat-0-tok-408")
        )
        cases += [
            Case(f"{surface} {way} non-stream c=50", plain, False, 50, "CPU per request", surface),
            Case(f"{surface} {way} 8 tokens stream c=10", short, True, 10, "CPU per request", surface),
            Case(f"{surface} {way} 408 tokens stream c=10", long, True, 10, "CPU per request (per token)", surface),
        ]
    return [*cases, Case(f"{surface} fusion fast0 stream c=50", FAST0, True, 50, "CPU per request", surface)]


CASES = [
    Case("fusion bench3 non-stream c=1", BENCH3, False, 1, "overhead over 395 ms"),
    Case("fusion bench3 stream c=1", BENCH3, True, 1, "overhead over 395 ms"),
    Case("fusion fast0 stream c=50", FAST0, True, 50, "CPU per request"),
    # The targets' own case (the full run's fusion scenario): upstream waits as in bench3, so the loop idles
    # between stages, as it does under real providers.
    Case("fusion bench3 stream c=50", BENCH3, True, 50, "CPU per request"),
    Case("fusion bench3 non-stream c=50", BENCH3, False, 50, "CPU per request"),
    Case("fusion fast0 non-stream c=50", FAST0, False, 50, "CPU per request"),
    Case("fusion 8 tokens stream c=10", FAST0, True, 10, "CPU per request"),
    Case("fusion 408 tokens stream c=10", LONG, True, 10, "CPU per request (per token vs 8 tokens)"),
    Case("pass-through non-stream c=1", None, False, 1, "added latency"),
    Case("pass-through non-stream c=50", None, False, 50, "CPU per request"),
    Case("pass-through 8 tokens stream c=10", "fake/lat-0-tok-8", True, 10, "CPU per request"),
    Case("pass-through 408 tokens stream c=10", "fake/lat-0-tok-408", True, 10, "CPU per request (per token vs 8)"),
    *surface_cases("responses"),
    *surface_cases("messages"),
    # A gateway: the client key checked on every request and masked in what is relayed.
    Case("fusion fast0 stream c=50, with a client key", FAST0, True, 50, "CPU per request", keyed=True),
    Case("pass-through 8 tokens stream c=10, with a client key", "fake/lat-0-tok-8", True, 10, "CPU per request",
         keyed=True),
    Case("pass-through 408 tokens stream c=10, with a client key", "fake/lat-0-tok-408", True, 10,
         "CPU per request (per token vs 8)", keyed=True),
]  # fmt: skip
# (arm of the table, the 8-token case, the 408-token case): the proxy CPU of one more relayed token.
TOKEN_PRICES = [
    ("fusion", "fusion 8 tokens stream c=10", "fusion 408 tokens stream c=10"),
    ("pass-through", "pass-through 8 tokens stream c=10", "pass-through 408 tokens stream c=10"),
    *(
        (f"{surface} {way}", f"{surface} {way} 8 tokens stream c=10", f"{surface} {way} 408 tokens stream c=10")
        for surface in ("responses", "messages")
        for way in ("native", "translated")
    ),
    (
        "pass-through with a client key",
        "pass-through 8 tokens stream c=10, with a client key",
        "pass-through 408 tokens stream c=10, with a client key",
    ),
]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(f"/tmp/openfusion-bench/ab-{time.strftime('%Y%m%d-%H%M%S')}")
    presets = {**main_presets(), LONG.name: LONG.toml()}
    builds = dict(spec.split("=", 1) for spec in args.build)
    results: dict[str, Any] = {"builds": builds, "cases": {}, "us_per_token": {}}
    bench = Bench(run_dir)
    try:
        bench.start_fake()
        tracing = ""
        if args.traced:
            port = free_port()
            argv = [sys.executable, "-m", "bench.collector", "--port", str(port)]
            collector = bench._start(Service("collector", argv, port, "/health", log_dir=bench.logs, cwd=REPO))
            tracing = f'\n[tracing]\nendpoint = "{collector.url}"\n'
        cases = [case for case in CASES if not args.only or any(word in case.name for word in args.only.split(","))]
        for arm, exe in builds.items():
            bench.openfusion_bin = exe
            extra = tracing if arm in args.traced else ""
            bench.start_openfusion(f"openfusion_{arm}", presets, http_extra=extra)
            if any(case.keyed for case in cases):
                bench.start_openfusion(f"openfusion_{arm}_keyed", presets, http_extra=extra, keyed=True)
        # Each arm's process (its CPU is the proxy's); the floor arm, if asked, beside the builds.
        procs = {arm: f"openfusion_{arm}" for arm in builds}
        if args.floor:
            bench.start_floor("floor", floor_presets())
            procs["floor"] = "floor"
        urls = {arm: bench.services[name].url + "/v1/chat/completions" for arm, name in procs.items()}
        for name, preset, stream, c, shows, surface, keyed in cases:
            model = preset if isinstance(preset, str) else f"fusion/{preset.name}" if preset else PASS_MODEL
            path, make_body = SURFACES[surface]
            body = make_body(model, stream=stream)
            arms = {}
            for arm, proc in procs.items():
                if arm == "floor" and (surface != "chat" or keyed):  # the floor speaks chat completions, keyless
                    continue
                proc = f"{proc}_keyed" if keyed else proc
                url = bench.services[proc].url + path
                fn = request_fn(url, body, stream=stream, headers=KEYED_AUTH if keyed else AUTH, dialect=surface)
                arms[arm] = (bench.session(), fn, (proc,))
            slices = await interleaved(
                bench,
                arms,
                concurrency=c,
                rounds=args.rounds,
                slice_s=args.slice_s * (2 if c == 1 and preset is not None else 1),
                max_requests=100_000,
                warmup_s=0.3,
                min_samples=min(c, 20),
            )
            base = BENCH3.critical_s if preset is BENCH3 else 0.0
            row = {arm: aggregate(s, base_s=base, proxy=arms[arm][2][0]) for arm, s in slices.items()}
            results["cases"][name] = {"shows": shows, **row}
            key = "overhead" if base else "wall"
            say(f"{name} ({key} p50 ms, proxy CPU ms/req, req/s, errors):")
            for arm, x in row.items():
                p50 = x.get(key, {}).get("p50", float("nan"))
                say(f"    {arm:>16}: {p50:8.2f} {proxy_cpu_ms(x):7.2f} {x['rps']:7.0f} {x['errors']:4d}")
        if args.breakdown:
            for stream in (False, True):
                body = chat_body(f"fusion/{BENCH3.name}", stream=stream)
                arms = {arm: request_fn(urls[arm], body, stream=stream, headers=AUTH) for arm in procs}
                mode = "stream" if stream else "non-stream"
                results.setdefault("breakdown", {})[mode] = await traced_critical_path(
                    bench, arms, requests=args.breakdown, stream=stream
                )
        for kind, short_case, long_case in TOKEN_PRICES:
            if short_case not in results["cases"] or long_case not in results["cases"]:
                continue
            say(f"price of a relayed {kind} token (µs of proxy CPU, 408 vs 8 tokens at c=10):")
            for arm in results["cases"][short_case].keys() & results["cases"][long_case].keys() - {"shows"}:
                short = proxy_cpu_ms(results["cases"][short_case][arm])
                long = proxy_cpu_ms(results["cases"][long_case][arm])
                results["us_per_token"].setdefault(kind, {})[arm] = price = (long - short) * 1000 / 400
                say(f"    {arm:>16}: {price:8.1f}")
        if args.traced:
            async with bench.session().get(bench.services["collector"].url + "/stats") as response:
                results["collector"] = await response.json()
            say(f"collector received: {results['collector']}")
    finally:
        await bench.close_sessions()
        bench.stop_all()
    (run_dir / "ab.json").write_bytes(dumps(results))
    say(f"wrote {run_dir / 'ab.json'}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--build", action="append", required=True, help="NAME=PATH of an `openfusion` executable (repeat to compare)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--traced", action="append", default=[], help="NAME of a build to run with tracing to a local collector"
    )
    parser.add_argument("--slice-s", type=float, default=3.0)
    parser.add_argument("--only", default="", help="comma-separated words: run only the cases whose name has one")
    parser.add_argument(
        "--breakdown",
        type=int,
        default=0,
        metavar="N",
        help="also cut N traced c=1 bench3 fusions per build (streamed and not) into their critical-path segments",
    )
    parser.add_argument(
        "--floor", action="store_true", help="run the floor arm (`bench/floor.py`) beside the builds in every case"
    )
    args = parser.parse_args()
    run_harness(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
