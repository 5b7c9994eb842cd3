"""The five scenarios and the profile. Each returns plain data for the report (times in ms)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.fakeup import parse_profile
from bench.harness import CLIENT_KEY, MASTER_KEY, NATIVE_PROVIDERS, REPO, Bench, aggregate, interleaved
from bench.load import Sample, agent_body, chat_body, messages_body, percentile, post, responses_body
from bench.procs import rss_bytes, tree

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


@dataclass(frozen=True)
class Plan:
    """How long and how hard each scenario runs."""

    quick: bool
    concurrencies: tuple[int, ...]
    rounds: int
    fusion_slice_s: float
    pass_slice_s: float
    peer_slice_s: float
    warmup_s: float
    prewarm: bool  # an unrecorded warm-up per arm before its first slice
    min_samples_cap: int  # a slice runs on until it has min(c, cap) samples
    max_requests: int
    tail_slow_s: float
    tail_concurrencies: tuple[int, ...]
    tail_deadline_s: float
    hang_panel_timeout_s: float | None
    mem_levels: tuple[int, ...]
    mem_agent_streams: int  # fusion streams held with a coding agent's ~150 KB conversation (`agent_body`)
    soak_requests: int
    workers_soak_requests: int  # through `openfusion serve --workers 2`, each worker's RSS followed
    profile_s: float
    access_log_arm: bool
    breakdown_requests: int  # sequential traced fusion requests per arm for the critical-path breakdown
    # Throughput with two workers: each slice's warm-up at full concurrency, then its steady window.
    workers_warmup_s: float
    workers_window_s: float
    workers_rounds: int
    workers_latency_bound: bool  # also the `bench3` arms (a 395 ms critical path)


QUICK = Plan(
    quick=True,
    concurrencies=(1, 50, 200),
    rounds=1,
    fusion_slice_s=0.6,
    pass_slice_s=0.4,
    peer_slice_s=1.0,
    warmup_s=0.2,
    prewarm=False,
    min_samples_cap=10,
    max_requests=20_000,
    tail_slow_s=0.8,
    tail_concurrencies=(1, 50),
    tail_deadline_s=0.5,
    hang_panel_timeout_s=None,
    mem_levels=(1, 100),
    mem_agent_streams=10,
    soak_requests=300,
    workers_soak_requests=600,
    profile_s=0.0,
    access_log_arm=False,
    breakdown_requests=4,
    workers_warmup_s=1.5,
    workers_window_s=2.5,
    workers_rounds=1,
    workers_latency_bound=False,
)

FULL = Plan(
    quick=False,
    concurrencies=(1, 50, 200),
    rounds=3,
    fusion_slice_s=4.0,
    pass_slice_s=3.0,
    peer_slice_s=4.0,
    warmup_s=0.5,
    prewarm=True,
    min_samples_cap=1000,
    max_requests=100_000,
    tail_slow_s=5.0,
    tail_concurrencies=(1, 50, 200),
    tail_deadline_s=0.5,
    hang_panel_timeout_s=2.0,
    mem_levels=(1, 100, 1000),
    mem_agent_streams=100,
    soak_requests=10_000,
    workers_soak_requests=100_000,
    profile_s=15.0,
    access_log_arm=True,
    breakdown_requests=40,
    workers_warmup_s=3.0,
    workers_window_s=6.0,
    workers_rounds=3,
    workers_latency_bound=True,
)

JUDGE_FORMAT = {"type": "json_schema", "json_schema": {"name": "fusion_analysis", "strict": True, "schema": {}}}


def _dur(model: str) -> float:
    return parse_profile(model).duration_s


@dataclass(frozen=True)
class Fusion:
    """A fusion preset over fake models, with its critical path."""

    name: str
    panel: tuple[str, ...]
    judge: str
    synth: str
    extra: str = ""

    @property
    def critical_s(self) -> float:
        return max(_dur(m) for m in self.panel) + _dur(self.judge) + _dur(self.synth)

    def toml(self) -> str:
        panel = ", ".join(f'"{m}"' for m in self.panel)
        return (
            f'name = "{self.name}"\n'
            f'description = "bench: critical path {self.critical_s * 1000:.0f} ms"\n'
            f"analysis_models = [{panel}]\n"
            f'model = "{self.judge}"\nsynthesis_model = "{self.synth}"\n{self.extra}'
        )

    def floor(self) -> dict[str, Any]:
        """The same five calls for the floor arm (`bench/floor.py`)."""
        return {"panel": list(self.panel), "judge": self.judge, "synth": self.synth}


BENCH3 = Fusion("bench3", ("fake/lat-100", "fake/lat-150", "fake/lat-200"), "fake/lat-50", "fake/lat-50-tok-20-every-5")
MOA3 = Fusion("moa3", ("fake/lat-100", "fake/lat-100", "fake/lat-100"), "fake/lat-100", "fake/lat-100")
FAST0 = Fusion("fast0", ("fake/lat-0", "fake/lat-0", "fake/lat-0"), "fake/lat-0", "fake/lat-0-tok-8")
PASS_MODEL = "fake/lat-0"  # a zero-latency upstream: every added millisecond is the proxy's
# bench3 with the result cache on (kept in the activity database, SQLite).
CACHED = replace(BENCH3, name="bench3cached", extra="cache_ttl_s = 86400\n")
CACHE_BYPASS = {**AUTH, "X-Openfusion-Cache": "bypass"}
MEMORY_CACHE = '\n[cache]\nbackend = "memory"\n'


# fast0 with a synthesizer whose 40 tokens come 2 ms apart, each read apart from the others: what relaying a token costs
# (bench.instructions).
DRIP = replace(FAST0, name="drip", synth="fake/lat-0-tok-40-every-2")
# 40 and 400 tokens 10 ms apart: the difference over 360 tokens is a token's cost without the request's. 2 ms apart,
# a server slowed by valgrind on a busy machine reads several tokens at once some of the time, and the counts follow
# the load (a relayed token read with others costs less): 10 ms apart, each is read alone.
DRIP40 = replace(FAST0, name="drip40", synth="fake/lat-0-tok-40-every-10")
DRIP400 = replace(FAST0, name="drip400", synth="fake/lat-0-tok-400-every-10")
# 400 tokens back to back: the fake writes them at once, and the server reads several at a time (how many depends on
# the socket, not the load: the fake is done before the first is parsed).
BURST400 = replace(FAST0, name="burst400", synth="fake/lat-0-tok-400")
# Pass-through models whose tokens come the same way.
PASS_DRIP40, PASS_DRIP400 = "fake/lat-0-tok-40-every-10", "fake/lat-0-tok-400-every-10"
HOLD = Fusion("hold", ("fake/lat-0", "fake/lat-0", "fake/lat-0"), "fake/lat-0", "fake/lat-0-tok-1200-every-100")
KEYED_AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}  # for a server started `keyed` (a gateway)


def native(model: str, surface: str) -> str:
    """`model` (`fake/…`) from the provider that speaks `surface` ("responses", "messages") itself."""
    provider = next(name for name, speaks in NATIVE_PROVIDERS.items() if speaks == surface)
    return f"{provider}/{model.split('/', 1)[1]}"


def main_presets() -> dict[str, str]:
    return {p.name: p.toml() for p in (BENCH3, MOA3, FAST0, CACHED, DRIP, DRIP40, DRIP400, BURST400)}


def floor_presets() -> dict[str, dict[str, Any]]:
    return {p.name: p.floor() for p in (BENCH3, MOA3, FAST0, HOLD, DRIP, DRIP40, DRIP400, BURST400)}


def ideal_fn(url: str, fusion: Fusion, *, stream: bool) -> Any:
    """The floor: the load generator itself calls panel (concurrently), judge, synthesizer on the fake."""
    panel = [chat_body(m, stream=False) for m in fusion.panel]
    judge = chat_body(fusion.judge, stream=False, response_format=JUDGE_FORMAT)
    synth = chat_body(fusion.synth, stream=stream, **({"stream_options": {"include_usage": True}} if stream else {}))

    async def run(session: aiohttp.ClientSession) -> Sample:
        t0 = time.perf_counter()
        answers = await asyncio.gather(*(post(session, url, body, stream=False) for body in panel))
        verdict = await post(session, url, judge, stream=False)
        offset = time.perf_counter() - t0
        final = await post(session, url, synth, stream=stream, keep_gaps=True)
        parts = [*answers, verdict, final]
        bad = next((p for p in parts if not p.ok), None)
        return Sample(
            started=t0,
            wall=time.perf_counter() - t0,
            ok=bad is None,
            status=final.status,
            headers=None,
            first_data=offset + final.first_data if final.first_data is not None else None,
            data_lines=final.data_lines,
            gaps=final.gaps,
            error=bad.error if bad else None,
        )

    return run


def request_fn(
    url: str, body: bytes, *, stream: bool, headers: dict[str, str] | None = None, dialect: str = "chat"
) -> Any:
    async def run(session: aiohttp.ClientSession) -> Sample:
        return await post(session, url, body, stream=stream, headers=headers, keep_gaps=stream, dialect=dialect)

    return run


# -- 1. fusion overhead --------------------------------------------------------------------------


async def fusion_overhead(bench: Bench, plan: Plan) -> dict[str, Any]:
    """Fusion through openfusion (Chat Completions, the Responses API, Anthropic Messages) vs the same calls made
    directly; overhead over the nominal critical path."""
    fake = bench.services["fake"].url + "/v1/chat/completions"
    of = bench.services["openfusion"].url + "/v1/chat/completions"
    of_responses = bench.services["openfusion"].url + "/v1/responses"
    of_messages = bench.services["openfusion"].url + "/v1/messages"
    floor = bench.services["floor"].url + "/v1/chat/completions"
    out: dict[str, Any] = {"preset": BENCH3.toml(), "critical_path_ms": BENCH3.critical_s * 1000}
    for stream in (False, True):
        mode = "stream" if stream else "non_stream"
        out[mode] = {}
        for c in plan.concurrencies:
            body = chat_body(f"fusion/{BENCH3.name}", stream=stream)
            responses = responses_body(f"fusion/{BENCH3.name}", stream=stream)
            messages = messages_body(f"fusion/{BENCH3.name}", stream=stream)
            arms = {
                "ideal": (bench.session(), ideal_fn(fake, BENCH3, stream=stream), ()),
                # The least a proxy on this stack costs for the same five calls (raw aiohttp, no logic).
                "floor": (bench.session(), request_fn(floor, body, stream=stream, headers=AUTH), ("floor",)),
                "openfusion": (bench.session(), request_fn(of, body, stream=stream, headers=AUTH), ("openfusion",)),
                # The same run on the Responses API: its events (and, streamed, the panel's text) rendered.
                "responses": (
                    bench.session(),
                    request_fn(of_responses, responses, stream=stream, headers=AUTH, dialect="responses"),
                    ("openfusion",),
                ),
                # The same run on the Anthropic Messages API: translated in, its events rendered out.
                "messages": (
                    bench.session(),
                    request_fn(of_messages, messages, stream=stream, headers=AUTH, dialect="messages"),
                    ("openfusion",),
                ),
            }
            slices = await interleaved(
                bench,
                arms,
                concurrency=c,
                rounds=plan.rounds,
                # c=1 yields ~2.5 requests a second: a longer slice for enough samples where the target is.
                slice_s=plan.fusion_slice_s * (1.5 if c == 1 else 1.0),
                max_requests=plan.max_requests,
                warmup_s=plan.warmup_s,
                prewarm=plan.prewarm,
                min_samples=min(c, plan.min_samples_cap),
            )
            out[mode][str(c)] = {
                arm: aggregate(s, base_s=BENCH3.critical_s, proxy=_PROXY.get(arm, "openfusion"))
                for arm, s in slices.items()
            }
            _log_row(f"fusion {mode} c={c}", out[mode][str(c)], "overhead")
    out["breakdown"] = await critical_path_breakdown(bench, plan, stream=False)
    out["breakdown_stream"] = await critical_path_breakdown(bench, plan, stream=True)
    return out


async def cache_hits(bench: Bench, plan: Plan) -> dict[str, Any]:
    """The result cache's hit path: a cached bench3 answer served again (from the activity database, and from
    process memory on a second instance), beside the same request run in full (`X-Openfusion-Cache: bypass`, at
    c=1 and 50). The servers' own hit counters are read before and after."""
    of = bench.services["openfusion"].url + "/v1/chat/completions"
    mem = bench.services["openfusion_memcache"].url + "/v1/chat/completions"
    out: dict[str, Any] = {"preset": CACHED.toml(), "critical_path_ms": CACHED.critical_s * 1000}
    hits_before = await _cache_hits_counted(bench)
    for stream in (False, True):
        mode = "stream" if stream else "non_stream"
        out[mode] = {}
        body = chat_body(f"fusion/{CACHED.name}", stream=stream)
        for url in (of, mem):
            primed = await post(bench.session(), url, body, stream=stream, headers=AUTH)  # fills the cache
            if not primed.ok:
                raise RuntimeError(f"priming the cache failed: {primed.error}")
        for c in plan.concurrencies:
            arms = {
                "hit (SQLite)": (bench.session(), request_fn(of, body, stream=stream, headers=AUTH), ("openfusion",)),
                "hit (memory)": (
                    bench.session(),
                    request_fn(mem, body, stream=stream, headers=AUTH),
                    ("openfusion_memcache",),
                ),
            }
            if c <= 50:
                run = request_fn(of, body, stream=stream, headers=CACHE_BYPASS)
                arms["bypass"] = (bench.session(), run, ("openfusion",))
            slices = await interleaved(
                bench,
                arms,
                concurrency=c,
                rounds=plan.rounds,
                slice_s=plan.fusion_slice_s,
                max_requests=plan.max_requests,
                warmup_s=plan.warmup_s,
                prewarm=plan.prewarm,
                min_samples=min(c, plan.min_samples_cap),
            )
            out[mode][str(c)] = {arm: aggregate(s, proxy=arms[arm][2][0]) for arm, s in slices.items()}
            _log_row(f"cache {mode} c={c}", out[mode][str(c)], "wall")
    out["hits_counted"] = await _cache_hits_counted(bench) - hits_before
    return out


async def _cache_hits_counted(bench: Bench) -> float:
    """openfusion_cache_lookups_total{result="hit"} as the two servers of the scenario report it, summed."""
    total = 0.0
    for service in ("openfusion", "openfusion_memcache"):
        async with bench.session().get(bench.services[service].url + "/metrics", headers=AUTH) as response:
            text = await response.text()
        found = re.search(r'^openfusion_cache_lookups_total\{result="hit"\} (\S+)$', text, re.MULTILINE)
        total += float(found.group(1)) if found else 0.0
    return total


_PROXY: dict[str, str | None] = {"ideal": None, "floor": "floor"}


# Segments of one bench3 request on the critical path, from the client's clock and the fake's trace.
SEGMENTS = (
    ("ingress", "request sent → first panel call arrives at the fake"),
    ("panel_slack", "slowest panelist: time beyond its 200 ms"),
    ("panel_to_judge", "slowest panel answer sent → judge call arrives"),
    ("judge_slack", "judge: time beyond its 50 ms"),
    ("judge_to_synth", "judge answer sent → synthesizer call arrives"),
    ("synth_slack", "synthesizer: time beyond its 145 ms"),
    ("egress", "synthesizer's last byte sent → client has the whole response"),
    ("total", "wall − 395 ms (the overhead)"),
)


async def critical_path_breakdown(bench: Bench, plan: Plan, *, stream: bool) -> dict[str, Any]:
    """Where the c=1 overhead goes: the ideal client, the floor arm and openfusion (see `traced_critical_path`)."""
    body = chat_body(f"fusion/{BENCH3.name}", stream=stream)
    arms = {
        "ideal": ideal_fn(bench.services["fake"].url + "/v1/chat/completions", BENCH3, stream=stream),
        "floor": request_fn(bench.services["floor"].url + "/v1/chat/completions", body, stream=stream, headers=AUTH),
        "openfusion": request_fn(
            bench.services["openfusion"].url + "/v1/chat/completions", body, stream=stream, headers=AUTH
        ),
    }
    return await traced_critical_path(bench, arms, requests=plan.breakdown_requests, stream=stream)


async def traced_critical_path(bench: Bench, arms: dict[str, Any], *, requests: int, stream: bool) -> dict[str, Any]:
    """Each arm's c=1 `bench3` fusion cut into the segments of `SEGMENTS`, one traced request at a time.

    The fake records each call's arrival and end on the machine's monotonic clock, the client its own
    send and finish on the same clock; the gaps between them are each hop's and each stage change's cost.
    Each arm runs its requests back to back, as in the c=1 slices (a process idle for a whole request
    of the other arm wakes slower), in two rounds with the order swapped.
    """
    fake_url = bench.services["fake"].url
    slowest, judge_model, synth_model = max(BENCH3.panel, key=_dur), BENCH3.judge, BENCH3.synth
    rows: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
    session = bench.session()
    per_round = max(1, requests // 2)
    for order in (list(arms), list(reversed(arms))):  # in order, then the other way round
        for arm in order:
            for i in range(per_round + 2):  # two unrecorded requests wake the arm up
                async with session.post(fake_url + "/trace") as started:
                    await started.read()
                t0 = time.monotonic()
                sample = await arms[arm](session)
                t1 = time.monotonic()
                async with session.get(fake_url + "/trace") as response:
                    calls = orjson.loads(await response.read())
                if i < 2 or not sample.ok:
                    continue
                first = min(c["arrived"] for c in calls)
                panel = next(c for c in calls if c["model"] == slowest)
                judge = next(c for c in calls if c["model"] == judge_model)
                synth = next(c for c in calls if c["model"] == synth_model)
                panel_done = max(c["done"] for c in calls if c["model"] in BENCH3.panel)
                rows[arm].append(
                    {
                        "ingress": first - t0,
                        "panel_slack": panel["done"] - panel["arrived"] - _dur(slowest),
                        "panel_to_judge": judge["arrived"] - panel_done,
                        "judge_slack": judge["done"] - judge["arrived"] - _dur(judge_model),
                        "judge_to_synth": synth["arrived"] - judge["done"],
                        "synth_slack": synth["done"] - synth["arrived"] - _dur(synth_model),
                        "egress": t1 - synth["done"],
                        "total": t1 - t0 - BENCH3.critical_s,
                    }
                )
    out: dict[str, Any] = {"n": {arm: len(r) for arm, r in rows.items()}, "p50_ms": {}}
    for arm, samples in rows.items():
        out["p50_ms"][arm] = {k: statistics.median(r[k] for r in samples) * 1000 for k, _ in SEGMENTS if samples}
    nan = float("nan")
    say(f"critical path at c=1, {'stream' if stream else 'non-stream'} (p50 ms, {' / '.join(arms)}):")
    say(
        "    " + ", ".join(f"{k} " + "/".join(f"{out['p50_ms'][a].get(k, nan):.2f}" for a in arms) for k, _ in SEGMENTS)
    )
    return out


# -- 1b. throughput with two workers -------------------------------------------------------------


async def workers(bench: Bench, plan: Plan) -> dict[str, Any]:
    """Streamed fusion at c=200 through one and two processes of openfusion and of the floor arm.

    The verdict's preset is `fast0`: every upstream call answers at once, so nothing but the CPU limits a
    closed loop of 200 connections and a server that uses both cores gets the machine's throughput.
    What the machine allows an arm is its cores divided by the CPU one request costs all the processes
    involved together (the proxy, the fake upstream, the load generator), measured in the same steady
    windows: each slice first runs at full concurrency for `workers_warmup_s` (connections opened, the
    first synchronised wave past), then CPU and completed requests are counted over `workers_window_s`,
    before the drain. In full mode the same is run with `bench3` (critical path 395 ms), whose closed
    loop cannot exceed c ÷ critical path (~506 req/s) whatever the CPU: reported as its ceiling.
    """
    c = max(plan.concurrencies)
    bench.start_openfusion("openfusion_w2", main_presets(), workers=2)
    bench.start_floor("floor_w2", floor_presets(), workers=2)
    names = {"openfusion": "openfusion", "openfusion_w2": "openfusion_w2", "floor": "floor", "floor_w2": "floor_w2"}
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {"concurrency": c, "cores": cores, "preset": FAST0.name, "window_s": plan.workers_window_s}
    presets = [FAST0, BENCH3] if plan.workers_latency_bound else [FAST0]
    try:
        for fusion in presets:
            out[fusion.name] = await _workers_at(bench, plan, fusion, names, concurrency=c, cores=cores)
    finally:
        bench.stop("openfusion_w2")
        bench.stop("floor_w2")
    return out


async def _workers_at(
    bench: Bench, plan: Plan, fusion: Fusion, names: dict[str, str], *, concurrency: int, cores: int
) -> dict[str, Any]:
    body = chat_body(f"fusion/{fusion.name}", stream=True)
    arms = {
        arm: (bench.session(), request_fn(bench.services[svc].url + "/v1/chat/completions", body, stream=True), (svc,))
        for arm, svc in names.items()
    }
    slices = await interleaved(
        bench,
        arms,
        concurrency=concurrency,
        rounds=plan.workers_rounds,
        slice_s=plan.workers_warmup_s + plan.workers_window_s,
        max_requests=plan.max_requests,
        warmup_s=plan.workers_warmup_s,
        prewarm=plan.prewarm,
        steady=True,
    )
    # A closed loop of c connections completes at most c requests per critical path, however fast the server.
    ceiling = concurrency / fusion.critical_s if fusion.critical_s else None
    out: dict[str, Any] = {"critical_path_ms": fusion.critical_s * 1000, "concurrency_ceiling_rps": ceiling}
    for arm, sl in slices.items():
        summary = aggregate(sl, base_s=fusion.critical_s, proxy=names[arm])
        if not fusion.critical_s and "wall" in summary:
            summary["overhead"] = summary["wall"]  # a zero critical path: all of the wall time is overhead
        per_req = sum(summary["cpu_ms_per_req"].values()) + summary["client_cpu_ms_per_req"]
        summary["all_cpu_ms_per_req"] = per_req
        summary["machine_allows_rps"] = cores * 1000 / per_req if per_req else None
        summary["share_of_allowed"] = summary["rps"] / summary["machine_allows_rps"] if per_req else None
        # The same for the cores other people's jobs left free during the slices (this machine is shared).
        free = max(0.0, cores - summary["other_load_cores"])
        summary["free_allows_rps"] = free * 1000 / per_req if per_req else None
        summary["share_of_free"] = summary["rps"] / summary["free_allows_rps"] if free and per_req else None
        out[arm] = summary
    _log_row(
        f"workers {fusion.name} stream c={concurrency}", {k: v for k, v in out.items() if isinstance(v, dict)}, "wall"
    )
    for arm, summary in out.items():
        if isinstance(summary, dict) and summary.get("cpu_split"):
            split = ", ".join("/".join(f"{100 * share:.0f}" for share in sl) for sl in summary["cpu_split"])
            held = ", ".join("/".join(str(n) for n in sl) for sl in summary.get("connection_split", []))
            say(f"    {arm}: CPU per process (%), slice by slice: {split}; connections held: {held}")
    return out


# -- 2. pass-through -----------------------------------------------------------------------------


async def passthrough(bench: Bench, plan: Plan, *, peers: list[str]) -> dict[str, Any]:
    """Direct vs openfusion vs LiteLLM (vs openfusion with its access log), interleaved, same bytes."""
    targets = {
        "direct": bench.services["fake"].url,
        "floor": bench.services["floor"].url,
        "openfusion": bench.services["openfusion"].url,
    }
    if "litellm" in peers:
        targets["litellm"] = bench.services["litellm"].url
    if "openfusion_accesslog" in bench.services:
        targets["openfusion_accesslog"] = bench.services["openfusion_accesslog"].url
    out: dict[str, Any] = {"model": PASS_MODEL}
    for stream in (False, True):
        mode = "stream" if stream else "non_stream"
        out[mode] = {}
        body = chat_body(PASS_MODEL, stream=stream)
        for c in plan.concurrencies:
            arms = {
                name: (
                    bench.session(),
                    request_fn(url + "/v1/chat/completions", body, stream=stream, headers=AUTH),
                    (name,) if name != "direct" else (),
                )
                for name, url in targets.items()
            }
            slices = await interleaved(
                bench,
                arms,
                concurrency=c,
                rounds=plan.rounds,
                slice_s=plan.pass_slice_s,
                max_requests=plan.max_requests,
                warmup_s=plan.warmup_s,
                prewarm=plan.prewarm,
                min_samples=min(c, plan.min_samples_cap),
            )
            row = {arm: aggregate(s, proxy=arm if arm != "direct" else None) for arm, s in slices.items()}
            direct = row["direct"].get("wall", {})
            for arm, summary in row.items():
                if arm == "direct" or "wall" not in summary:
                    continue
                summary["added"] = {q: summary["wall"][q] - direct.get(q, float("nan")) for q in summary["wall"]}
                summary["ratio_p50"] = summary["wall"]["p50"] / direct["p50"] if direct.get("p50") else None
            if "litellm" in row and "added" in row["litellm"] and "added" in row.get("openfusion", {}):
                of_added = row["openfusion"]["added"]["p50"]
                row["litellm_over_openfusion_added_p50"] = (
                    row["litellm"]["added"]["p50"] / of_added if of_added > 0 else None
                )
            out[mode][str(c)] = row
            _log_row(f"pass-through {mode} c={c}", row, "added")
    return out


# -- 3. OptiLLM moa ------------------------------------------------------------------------------


async def optillm_moa(bench: Bench, plan: Plan) -> dict[str, Any]:
    """OptiLLM's moa vs openfusion's fusion over the same 100 ms model; wall over each one's own critical path."""
    model = "fake/lat-100"
    opt = bench.services["optillm"].url + "/v1/chat/completions"
    of = bench.services["openfusion"].url + "/v1/chat/completions"
    out: dict[str, Any] = {"model": model, "openfusion_preset": MOA3.toml()}
    for c in plan.concurrencies:
        arms = {
            "optillm_moa": (
                bench.session(180),
                # No `sk-` bearer: OptiLLM would build a new OpenAI client per request (its best case here).
                request_fn(opt, chat_body(f"moa-{model}", stream=False), stream=False),
                ("optillm",),
            ),
            "openfusion": (
                bench.session(180),
                request_fn(of, chat_body(f"fusion/{MOA3.name}", stream=False), stream=False),
                ("openfusion",),
            ),
        }
        slices = await interleaved(
            bench,
            arms,
            concurrency=c,
            rounds=plan.rounds,
            slice_s=plan.peer_slice_s,
            max_requests=plan.max_requests,
            warmup_s=plan.warmup_s,
            prewarm=plan.prewarm,
            min_samples=min(c, plan.min_samples_cap),
        )
        row: dict[str, Any] = {}
        for arm, s in slices.items():
            summary = aggregate(s, proxy=arm.split("_")[0])
            calls = sum(summary["upstream_calls_per_req"].values())
            # Every call of both arms takes 100 ms at the fake. openfusion's panel is concurrent, so
            # its own critical path is 3 stages; OptiLLM's calls run one after another.
            stages = 3 if arm == "openfusion" else calls
            critical = stages * _dur(model) * 1000
            summary["own_critical_path_ms"] = critical
            if "wall" in summary:
                summary["overhead"] = {q: v - critical for q, v in summary["wall"].items()}
                summary["wall_over_critical_p50"] = summary["wall"]["p50"] / critical if critical else None
            row[arm] = summary
        out[str(c)] = row
        _log_row(f"optillm moa c={c}", row, "overhead")
    return out


# -- 4. tail -------------------------------------------------------------------------------------


async def tail(bench: Bench, plan: Plan) -> dict[str, Any]:
    """One panelist is slow or hangs: does wall time follow the panel deadline (when openfusion has one)?"""
    slow_ms = int(plan.tail_slow_s * 1000)
    deadline = plan.tail_deadline_s
    slow = Fusion("tail", ("fake/lat-100", "fake/lat-150", f"fake/lat-{slow_ms}"), BENCH3.judge, BENCH3.synth)
    hung = Fusion("hang", ("fake/lat-100", "fake/lat-150", "fake/hang"), BENCH3.judge, BENCH3.synth)
    rest_ms = (_dur(slow.judge) + _dur(slow.synth)) * 1000
    with_deadline = f"panel_deadline_s = {deadline}\n"
    arms = {
        # arm: (preset, expected wall ms)
        "slow panelist, no deadline": (slow, slow.critical_s * 1000),
        "slow panelist, panel_deadline_s": (
            replace(slow, name="tail_deadline", extra=with_deadline),
            deadline * 1000 + rest_ms,
        ),
        "hung panelist, panel_deadline_s": (
            replace(hung, name="hang_deadline", extra=with_deadline),
            deadline * 1000 + rest_ms,
        ),
    }
    if plan.hang_panel_timeout_s:
        timeout = plan.hang_panel_timeout_s
        arms["hung panelist, panel_timeout_s, no deadline"] = (
            replace(hung, name="hang_timeout", extra=f"panel_timeout_s = {timeout}\n"),
            timeout * 1000 + rest_ms,
        )
    out: dict[str, Any] = {"slow_panelist_ms": slow_ms, "deadline_s": deadline, "arms": {}}
    try:
        bench.start_openfusion("openfusion_tail", {p.name: p.toml() for p, _ in arms.values()})
        out["deadline_supported"] = True
    except RuntimeError as exc:
        out["deadline_supported"] = False
        out["deadline_probe"] = _first_error_line(str(exc))
        bench.stop("openfusion_tail")
        arms = {"slow panelist, no deadline": arms["slow panelist, no deadline"]}
        bench.start_openfusion("openfusion_tail", {slow.name: slow.toml()})
    url = bench.services["openfusion_tail"].url + "/v1/chat/completions"
    for arm, (preset, expected_ms) in arms.items():
        waves: dict[str, Any] = {}
        for c in plan.tail_concurrencies:
            for stream in (True, False):
                if not stream and c != 1:
                    continue
                mode = "stream" if stream else "non_stream"
                fn = request_fn(url, chat_body(f"fusion/{preset.name}", stream=stream), stream=stream)
                sl = await bench.measure_wave(bench.session(600), fn, count=c, watch=("openfusion_tail",))
                summary = aggregate([sl], base_s=expected_ms / 1000, proxy="openfusion_tail")
                waves[f"{mode} c={c}"] = summary
                _log_row(f"tail {arm}: {mode} c={c}", {"openfusion": summary}, "overhead")
        out["arms"][arm] = {"preset": preset.toml(), "expected_ms": expected_ms, "waves": waves}
    bench.stop("openfusion_tail")
    return out


def _first_error_line(text: str) -> str:
    for line in text.splitlines():
        if "panel_deadline_s" in line or "Extra inputs" in line or "error" in line.lower():
            return line.strip()[:200]
    return text.strip().splitlines()[0][:200] if text.strip() else ""


# -- 5. memory -----------------------------------------------------------------------------------


async def memory(bench: Bench, plan: Plan) -> dict[str, Any]:
    """RSS with N in-flight fusion streams (a slow synthesizer keeps them open), and around a soak."""
    hold = HOLD
    out: dict[str, Any] = {"inflight": {}, "hold_preset": hold.toml()}
    service = bench.start_openfusion("openfusion_mem", {"hold": hold.toml(), FAST0.name: FAST0.toml()})
    url = service.url + "/v1/chat/completions"
    session = bench.session(600)
    warm = request_fn(url, chat_body(f"fusion/{FAST0.name}", stream=True), stream=True)
    await bench.measure(session, warm, concurrency=10, duration_s=30, max_requests=100)
    out["rss_idle_warm_mb"] = service.rss() / 2**20
    body = chat_body("fusion/hold", stream=True)
    for n in plan.mem_levels:
        out["inflight"][str(n)] = result = await hold_streams(bench, service, session, url, body, n)
        say(
            f"[memory] {n} fusion streams: {result['in_flight']} in synthesis, RSS {result['rss_before_mb']:.1f} ->"
            f" {result['rss_held_mb']:.1f} MiB ({result['per_stream_kb']:.1f} KiB each),"
            f" {result['rss_after_release_mb']:.1f} MiB after release"
        )
    bench.stop("openfusion_mem")
    out["agent_inflight"] = await hold_agent_streams(bench, plan, session)
    # The same number of plain pass-through streams, on a fresh instance (a used one reuses the memory
    # its fusion streams left behind): what a stream costs without the fusion machinery.
    n = max(plan.mem_levels)
    service = bench.start_openfusion("openfusion_mem_pt", {FAST0.name: FAST0.toml()})
    url = service.url + "/v1/chat/completions"
    await bench.measure(
        session,
        request_fn(url, chat_body(PASS_MODEL, stream=True), stream=True),
        concurrency=10,
        duration_s=30,
        max_requests=100,
    )
    slow_model = chat_body(hold.synth, stream=True)
    out["passthrough_inflight"] = result = await hold_streams(bench, service, session, url, slow_model, n)
    say(f"[memory] {n} pass-through streams: {result['per_stream_kb']:.1f} KiB each")
    bench.stop("openfusion_mem_pt")
    # The floor arm holding the same fusion streams, fresh and warmed the same way.
    service = bench.start_floor("floor_mem", floor_presets())
    url = service.url + "/v1/chat/completions"
    await bench.measure(
        session,
        request_fn(url, chat_body(f"fusion/{FAST0.name}", stream=True), stream=True),
        concurrency=10,
        duration_s=30,
        max_requests=100,
    )
    out["floor_inflight"] = result = await hold_streams(bench, service, session, url, body, n)
    say(f"[memory] {n} fusion streams through the floor arm: {result['per_stream_kb']:.1f} KiB each")
    bench.stop("floor_mem")
    levels = [str(n) for n in plan.mem_levels if out["inflight"].get(str(n), {}).get("in_flight")]
    if len(levels) >= 2:
        lo, hi = out["inflight"][levels[-2]], out["inflight"][levels[-1]]
        dn = hi["in_flight"] - lo["in_flight"]
        if dn > 0:
            out["slope_kb_per_stream"] = (hi["rss_held_mb"] - lo["rss_held_mb"]) * 1024 / dn
    out["soak"] = await soak(bench, plan)
    out["workers_soak"] = await soak_workers(bench, plan)
    return out


async def hold_agent_streams(bench: Bench, plan: Plan, session: aiohttp.ClientSession) -> dict[str, Any]:
    """Fusion streams held inside synthesis with a coding agent's conversation (~150 KB, `bench.load.agent_body`),
    on a fresh instance: what a held stream keeps of a long conversation (OPTIMISATIONS 37: the run lets go of it
    once the synthesizer's request is made), which the one-line question of the other levels cannot show."""
    hold = HOLD
    service = bench.start_openfusion("openfusion_mem_agent", {"hold": hold.toml(), FAST0.name: FAST0.toml()})
    url = service.url + "/v1/chat/completions"
    warm = request_fn(url, agent_body(f"fusion/{FAST0.name}", stream=True), stream=True)
    await bench.measure(session, warm, concurrency=10, duration_s=30, max_requests=100)
    body = agent_body("fusion/hold", stream=True)
    n = plan.mem_agent_streams
    result = await hold_streams(bench, service, session, url, body, n)
    result["body_kb"] = len(body) / 1024
    say(
        f"[memory] {n} fusion streams with a {result['body_kb']:.0f} KB conversation: {result['in_flight']} in"
        f" synthesis, {result['per_stream_kb']:.1f} KiB each"
    )
    bench.stop("openfusion_mem_agent")
    return result


async def hold_streams(
    bench: Bench,
    service: Any,
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    n: int,
    *,
    at_hold: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Open n streams at once, wait until each has its first answer token, read RSS, then close them.

    `at_hold`: awaited while every stream is held, before RSS is read (`bench.heap` takes its snapshot there).
    The open files (sockets) are counted too: RSS per held stream follows the burst's peak, and the upstream
    connections the burst left open say how high that was (a quicker ramp opens more at once).
    """
    before, files_before = service.rss(), service.open_files()
    reached = 0
    all_in = asyncio.Event()
    release = asyncio.Event()
    errors: Counter[str] = Counter()

    async def one() -> None:
        nonlocal reached
        try:
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                async for line in response.content:
                    # The first answer token, not a progress chunk: the run is then inside synthesis.
                    if line.startswith(b"data:") and b'"content":"' in line and b'"content":""' not in line:
                        break
                else:
                    errors["stream ended before a token"] += 1
                    return
                reached += 1
                if reached == n:
                    all_in.set()
                # Keep reading, as a real client does: a stream nobody reads piles its tokens up in the
                # proxy's queue and socket buffers, and that is not the memory of an in-flight request.
                async for _ in response.content:
                    if release.is_set():
                        break
        except (aiohttp.ClientError, TimeoutError) as exc:
            errors[type(exc).__name__] += 1

    t0 = time.perf_counter()
    tasks = [asyncio.create_task(one()) for _ in range(n)]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(50):
            await all_in.wait()
    ramp = time.perf_counter() - t0
    await asyncio.sleep(0.5)
    if at_hold is not None:
        await at_hold()
    held, files_held = service.rss(), service.open_files()
    fake_rss = bench.services["fake"].rss()
    release.set()
    await asyncio.gather(*tasks)
    await asyncio.sleep(1.5)
    after = service.rss()
    return {
        "in_flight": reached,
        "errors": dict(errors),
        "ramp_s": ramp,
        "rss_before_mb": before / 2**20,
        "rss_held_mb": held / 2**20,
        "rss_after_release_mb": after / 2**20,
        "per_stream_kb": (held - before) / 1024 / max(1, reached),
        "fake_rss_mb": fake_rss / 2**20,
        "open_files_before": files_before,
        "open_files_held": files_held,
    }


def half_streamed(url: str) -> Callable[[aiohttp.ClientSession], Awaitable[Sample]]:
    """A request function sending `fast0` fusions to `url`, streamed and not in turn."""
    bodies = [chat_body(f"fusion/{FAST0.name}", stream=s) for s in (False, True)]
    counter = 0

    async def alternate(session: aiohttp.ClientSession) -> Sample:
        nonlocal counter
        counter += 1
        stream = counter % 2 == 0
        return await post(session, url, bodies[stream], stream=stream)

    return alternate


async def soak(bench: Bench, plan: Plan) -> dict[str, Any]:
    """RSS of a fresh instance before and after `soak_requests` fusion requests (half streamed)."""
    service = bench.start_openfusion("openfusion_soak", {FAST0.name: FAST0.toml()})
    url = service.url + "/v1/chat/completions"
    session = bench.session(120)
    alternate = half_streamed(url)

    out: dict[str, Any] = {"rss_fresh_mb": service.rss() / 2**20}
    await bench.measure(session, alternate, concurrency=50, duration_s=60, max_requests=200)
    out["rss_before_mb"] = service.rss() / 2**20
    # Ten legs with an RSS reading after each: a plateau and a leak look alike over one reading.
    slices, checkpoints, done = [], [], 0
    for leg in range(10):
        size = plan.soak_requests * (leg + 1) // 10 - done
        sl = await bench.measure(
            session, alternate, concurrency=50, duration_s=120, max_requests=size, watch=("openfusion_soak",)
        )
        slices.append(sl)
        done += sl.completed
        checkpoints.append((done, service.rss() / 2**20))
    out["rss_after_mb"] = service.rss() / 2**20
    await asyncio.sleep(3)
    out["rss_after_idle_mb"] = service.rss() / 2**20
    out["requests"] = done
    out["checkpoints"] = checkpoints
    out["summary"] = aggregate(slices, proxy="openfusion_soak")
    half = checkpoints[len(checkpoints) // 2 - 1]
    out["growth_second_half_kb_per_1k"] = (
        (checkpoints[-1][1] - half[1]) * 1024 / ((checkpoints[-1][0] - half[0]) / 1000)
        if checkpoints[-1][0] > half[0]
        else None
    )
    out["growth_kb_per_1k_requests"] = (out["rss_after_mb"] - out["rss_before_mb"]) * 1024 / (done / 1000)
    say(
        f"[soak] {done} requests ({out['summary']['errors']} errors): RSS {out['rss_before_mb']:.1f} ->"
        f" {out['rss_after_mb']:.1f} MiB, {out['rss_after_idle_mb']:.1f} after 3 s idle;"
        f" second half {out['growth_second_half_kb_per_1k']:.1f} KiB per 1k requests"
    )
    bench.stop("openfusion_soak")
    return out


FLAT_MIB = 1.0  # "flat": less than this much RSS growth over a soak's second half
PROBE = REPO / "bench" / "probe"
MEMORY_SIGNAL = signal.SIGRTMIN + 3  # the probe's memory reading (bench/probe/sitecustomize.py `_install_memory`)


def worker_pids(service: Any) -> list[int]:
    """The worker processes under `openfusion serve --workers N` (spawned: not the resource tracker)."""
    pids = []
    for pid in tree(service.pid)[1:]:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
    return sorted(pids)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def memory_readings(pids: list[int], path: Path, *, trim: bool = False) -> dict[str, dict[str, Any]]:
    """Ask each worker's probe for a reading of its memory and wait for them (a worker gone is left out)."""
    lines = _lines(path)
    asked = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, MEMORY_SIGNAL + 1 if trim else MEMORY_SIGNAL)
            asked.append(pid)
    want = len(lines) + len(asked) * (2 if trim else 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(lines) < want:
        await asyncio.sleep(0.05)
        lines = _lines(path)
    rows = [orjson.loads(line) for line in lines[want - len(asked) * (2 if trim else 1) :]]
    return {str(row["pid"]): row for row in rows if not trim or row["kind"] == "trimmed"}


def live_mb(reading: dict[str, Any]) -> float | None:
    """Memory in live use: Python's small-object heap plus what malloc has handed out (see the probe)."""
    if reading.get("pymalloc_bytes") is None or reading.get("malloc_bytes") is None:
        return None
    return float(reading["pymalloc_bytes"] + reading["malloc_bytes"]) / 2**20


async def soak_workers(bench: Bench, plan: Plan, *, workers: int = 2, legs: int = 20) -> dict[str, Any]:
    """RSS of each worker of a fresh `openfusion serve --workers N` over `workers_soak_requests` fusion requests
    (half streamed), read after each of `legs` equal legs; flat = each worker grew < FLAT_MIB over the second half.

    Beside RSS, the probe reads each worker's memory in live use (Python's heap and malloc's, see `live_mb`): a leak
    grows it, while RSS also grows as the allocators keep freed memory resident (the high-water of a busier moment,
    fragmentation) and as SQLite's page cache fills (2 MB a connection, bounded). `no_leak` = each worker's live
    memory grew < FLAT_MIB over the second half. At the end the workers trim malloc's free memory once
    (`rss_trimmed_mb`): RSS that goes with the trim was the allocator's, not the server's."""
    name = f"openfusion_soak_w{workers}"
    readings_file = bench.run_dir / f"{name}-memory.jsonl"
    probe = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROBE), os.environ.get("PYTHONPATH")])),
        "OPENFUSION_MEMORY": str(readings_file),
    }
    service = bench.start_openfusion(name, {FAST0.name: FAST0.toml()}, workers=workers, env=probe)
    url = service.url + "/v1/chat/completions"
    session = bench.session(120)
    alternate = half_streamed(url)

    def sample() -> dict[str, float]:
        return {str(pid): rss_bytes(pid) / 2**20 for pid in worker_pids(service)}

    async def checkpoint(done: int, t_s: float) -> dict[str, Any]:
        readings = await memory_readings(worker_pids(service), readings_file)
        return {
            "requests": done,
            "t_s": round(t_s, 1),
            "rss_mb": sample(),
            "live_mb": {pid: live_mb(r) for pid, r in readings.items()},
            "sqlite_mb": {pid: (r.get("sqlite_bytes") or 0) / 2**20 for pid, r in readings.items()},
            "malloc_free_mb": {pid: (r.get("malloc_free_bytes") or 0) / 2**20 for pid, r in readings.items()},
        }

    await bench.measure(session, alternate, concurrency=50, duration_s=60, max_requests=200 * workers)
    out: dict[str, Any] = {"workers": workers, "rss_before_mb": sample()}
    slices, checkpoints, done = [], [], 0
    t0 = time.monotonic()
    for leg in range(legs):
        size = plan.workers_soak_requests * (leg + 1) // legs - done
        sl = await bench.measure(session, alternate, concurrency=50, duration_s=600, max_requests=size, watch=(name,))
        slices.append(sl)
        done += sl.completed
        checkpoints.append(await checkpoint(done, time.monotonic() - t0))
    trimmed = await memory_readings(worker_pids(service), readings_file, trim=True)
    out["rss_trimmed_mb"] = {pid: r["vmrss_bytes"] / 2**20 for pid, r in trimmed.items()}
    bench.stop(name)
    out["requests"] = done
    out["checkpoints"] = checkpoints
    out["summary"] = aggregate(slices, proxy=name)
    out["per_worker"] = per_worker_growth(checkpoints)
    out["flat"] = bool(out["per_worker"]) and all(w["second_half_mb"] < FLAT_MIB for w in out["per_worker"].values())
    live = [w.get("live_second_half_mb") for w in out["per_worker"].values()]
    out["no_leak"] = bool(live) and all(g is not None and g < FLAT_MIB for g in live)
    say(
        f"[soak --workers {workers}] {done} requests ({out['summary']['errors']} errors) in "
        f"{checkpoints[-1]['t_s']} s: "
        + "; ".join(
            f"worker {pid} {w['first_mb']:.1f} -> {w['last_mb']:.1f} MiB ({w['second_half_mb']:+.2f} over the "
            f"second half, live memory {_signed(w.get('live_second_half_mb'))})"
            for pid, w in out["per_worker"].items()
        )
        + (" — flat" if out["flat"] else " — RSS not flat")
        + ("" if out["flat"] else (", live memory flat" if out["no_leak"] else ", live memory grows"))
    )
    return out


def _signed(mb: float | None) -> str:
    return "?" if mb is None else f"{mb:+.2f}"


def per_worker_growth(checkpoints: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each worker seen at every checkpoint: its RSS at the first, the middle and the last one (a worker that was
    replaced mid-soak is not among them: its absence shows as fewer workers); its live memory's growth over the
    second half where the probe read it."""
    if len(checkpoints) < 2:
        return {}
    pids = set.intersection(*(set(c["rss_mb"]) for c in checkpoints))
    mid = checkpoints[len(checkpoints) // 2 - 1]
    half, last = mid["rss_mb"], checkpoints[-1]
    out = {}
    for pid in sorted(pids):
        growth = {
            "first_mb": checkpoints[0]["rss_mb"][pid],
            "middle_mb": half[pid],
            "last_mb": last["rss_mb"][pid],
            "second_half_mb": last["rss_mb"][pid] - half[pid],
        }
        live = [c.get("live_mb", {}).get(pid) for c in (mid, last)]
        if None not in live:
            growth["live_middle_mb"], growth["live_last_mb"] = live[0], live[1]
            growth["live_second_half_mb"] = live[1] - live[0]
        out[pid] = growth
    return out


# -- 6. profile ----------------------------------------------------------------------------------


async def profile(bench: Bench, plan: Plan) -> dict[str, Any]:
    """py-spy on openfusion serving streamed fusion at c=50: short answers (per-request costs), then long
    answers (per-token costs); and the CPU price of one relayed token."""
    long = replace(FAST0, name="fast0long", synth="fake/lat-0-tok-408")
    service = bench.start_openfusion("openfusion_profile", {FAST0.name: FAST0.toml(), long.name: long.toml()})
    url = service.url + "/v1/chat/completions"
    session = bench.session(120)
    out: dict[str, Any] = {}
    for key, preset, seconds in (("requests", FAST0, plan.profile_s), ("tokens", long, plan.profile_s * 2 / 3)):
        fn = request_fn(url, chat_body(f"fusion/{preset.name}", stream=True), stream=True)
        await bench.measure(session, fn, concurrency=50, duration_s=2, max_requests=500)
        out[key] = await _pyspy(bench, service, session, fn, seconds, key)
        out[key]["load"] = f"streamed `fusion/{preset.name}` (every upstream latency 0, {preset.synth}) at c=50"
    # The price of one relayed token: 408 tokens vs 8 from the synthesizer, same everything else.
    costs = {}
    for preset in (FAST0, long):
        fn = request_fn(url, chat_body(f"fusion/{preset.name}", stream=True), stream=True)
        sl = await bench.measure(
            session, fn, concurrency=10, duration_s=4, max_requests=2000, watch=("openfusion_profile",)
        )
        costs[preset.name] = aggregate([sl], proxy="openfusion_profile")
    short_ms = proxy_cpu_ms(costs[FAST0.name])
    long_ms = proxy_cpu_ms(costs[long.name])
    out["token_cost"] = {
        "cpu_ms_8_tokens": short_ms,
        "cpu_ms_408_tokens": long_ms,
        "us_per_token": (long_ms - short_ms) * 1000 / 400,
        "data_lines_408": costs[long.name].get("data_lines"),
    }
    say(f"[profile] relaying a token costs {out['token_cost']['us_per_token']:.1f} µs of proxy CPU")
    bench.stop("openfusion_profile")
    return out


async def _pyspy(
    bench: Bench, service: Any, session: aiohttp.ClientSession, fn: Any, seconds: float, key: str
) -> dict[str, Any]:
    raw = bench.run_dir / f"profile-{key}.raw.txt"
    pyspy = Path(sys.executable).parent / "py-spy"
    argv = [str(pyspy), "record", "--pid", str(service.pid), "--rate", "250", "--duration", str(int(seconds))]
    # --gil: only the thread holding the GIL is sampled, i.e. Python actually running; idle waits
    # (epoll, anyio's parked worker threads) drop out, so shares are shares of the process's Python CPU.
    argv += ["--format", "raw", "--output", str(raw), "--gil"]
    recorder = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    await asyncio.sleep(0.5)
    sl = await bench.measure(
        session, fn, concurrency=50, duration_s=seconds - 1, max_requests=10**6, watch=(service.name,)
    )
    _, err = await recorder.communicate()
    out: dict[str, Any] = {"command": " ".join(argv), "summary_under_profiler": aggregate([sl], proxy=service.name)}
    if recorder.returncode != 0 or not raw.exists():
        out["error"] = err.decode(errors="replace")[-500:]
    else:
        out.update(top_frames(raw))
        out["raw"] = str(raw)
    return out


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def source_path(path: str) -> str:
    """A source file's path, short: from its package (site-packages, openfusion, stdlib/) or this checkout."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    if "/src/openfusion/" in path:
        return "openfusion/" + path.split("/src/openfusion/", 1)[1]
    if "/lib/python3" in path:
        return "stdlib/" + path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return path.removeprefix(f"{REPO}/")  # the benchmarks' own (the floor arm)


def package_of(path: str) -> str:
    """The package a source file belongs to (`openfusion/<subpackage>`, `stdlib/<module>`, or its top level)."""
    where = source_path(path)
    if where.startswith("openfusion/"):
        parts = where.split("/")
        return "/".join(parts[:2]) if len(parts) > 2 else "openfusion"
    if where.startswith("stdlib/"):
        parts = where.split("/")
        return "stdlib/" + (parts[1].removesuffix(".py") if len(parts) > 1 else "")
    return where.split("/", 1)[0].removesuffix(".py")


def top_frames(raw: Path, limit: int = 40) -> dict[str, Any]:
    """Self and inclusive time per function, and self time per package, from py-spy's collapsed stacks."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        names = []
        for frame in frames:
            match = _FRAME.match(frame)
            names.append((match["func"], match["file"]) if match else (frame, ""))
        func, path = names[-1]
        self_time[f"{func} ({source_path(path)})"] += count
        packages[package_of(path)] += count
        for key in {f"{f} ({source_path(p)})" for f, p in names}:
            inclusive[key] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, 100 * v / total) for k, v in counter.most_common(limit)] if total else []

    return {"samples": total, "self": share(self_time), "inclusive": share(inclusive), "packages": share(packages)}


# -- helpers -------------------------------------------------------------------------------------


def _log_row(title: str, row: dict[str, Any], metric: str) -> None:
    parts = []
    for arm, summary in row.items():
        if not isinstance(summary, dict) or "n" not in summary:
            continue
        value = summary.get(metric, summary.get("wall", {}))
        p50 = value.get("p50") if isinstance(value, dict) else None
        cpu = sum(v for k, v in summary.get("cpu_ms_per_req", {}).items() if k != "fake")
        text = f"{arm}: {metric} p50 {p50:.1f} ms" if p50 is not None else f"{arm}: -"
        text += f", {summary['rps']:.0f} req/s, cpu {cpu:.2f} ms/req, n={summary['n']}, err={summary['errors']}"
        parts.append(text)
    say(f"[{title}] " + " | ".join(parts))


def proxy_cpu_ms(summary: dict[str, Any]) -> float:
    return sum(v for k, v in summary.get("cpu_ms_per_req", {}).items() if k != "fake")


def say(text: str) -> None:
    """Progress on the console (the harness's only output besides the report)."""
    print(text, flush=True)  # noqa: T201


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


__all__ = ["FULL", "QUICK", "Plan", "percentile"]
