"""RESULTS.md, results.json and the overhead chart, from the results of one run."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.scenarios import dumps

ARM_LABELS = {
    "ideal": "ideal (the client calls the fake itself)",
    "floor": "floor (raw aiohttp proxy, same five calls)",
    "openfusion": "openfusion",
    "responses": "openfusion, Responses API",
    "openfusion_w2": "openfusion --workers 2",
    "floor_w2": "floor, 2 processes",
    "messages": "openfusion, Anthropic Messages API",
    "direct": "direct to the fake",
    "litellm": "LiteLLM proxy",
    "openfusion_accesslog": "openfusion, access log on",
    "optillm_moa": "OptiLLM moa",
}


def f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def q(summary: dict[str, Any], key: str, p: str = "p50", digits: int = 1) -> str:
    return f((summary.get(key) or {}).get(p), digits)


def qqq(summary: dict[str, Any], key: str) -> str:
    values = summary.get(key) or {}
    return " / ".join(f(values.get(p)) for p in ("p50", "p95", "p99")) if values else "–"


def proxy_cpu(summary: dict[str, Any]) -> float | None:
    cpu = summary.get("cpu_ms_per_req") or {}
    own = [v for k, v in cpu.items() if k != "fake"]
    return sum(own) if own else None


def _get(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


# -- targets -------------------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for the absolute targets: orchestration overhead, CPU, first byte, memory."""
    rows: list[tuple[str, str, str]] = []

    def verdict(ok: bool | None) -> str:
        return "–" if ok is None else ("met" if ok else "**not met**")

    over = [_get(results, "fusion", mode, "1", "openfusion", "overhead", "p50") for mode in ("non_stream", "stream")]
    ideal = [_get(results, "fusion", mode, "1", "ideal", "overhead", "p50") for mode in ("non_stream", "stream")]
    if all(v is not None for v in over):
        rows.append(
            (
                "fusion orchestration overhead ≤ 5 ms p50 at c=1",
                f"{f(over[0])} ms non-stream, {f(over[1])} ms stream (over the nominal critical path; the "
                f"ideal client's own floor is {f(ideal[0])} / {f(ideal[1])} ms)",
                verdict(max(over) <= 5),
            )
        )
    cpu = [proxy_cpu(_get(results, "fusion", mode, "50", "openfusion") or {}) for mode in ("non_stream", "stream")]
    if all(v is not None for v in cpu):
        rows.append(
            (
                "proxy CPU per fusion request ≤ 10 ms at c=50",
                f"{f(cpu[0], 2)} ms non-stream, {f(cpu[1], 2)} ms stream",
                verdict(max(cpu) <= 10),  # type: ignore[type-var]
            )
        )
    added = _get(results, "passthrough", "non_stream", "1", "openfusion", "added", "p50")
    if added is not None:
        rows.append(
            ("pass-through overhead ≤ 2.5 ms p50 (c=1, non-stream)", f"{f(added, 2)} ms", verdict(added <= 2.5))
        )
    for c in ("1", "50"):
        ratio = _get(results, "passthrough", "non_stream", c, "litellm_over_openfusion_added_p50")
        lite = _get(results, "passthrough", "non_stream", c, "litellm", "added", "p50")
        of = _get(results, "passthrough", "non_stream", c, "openfusion", "added", "p50")
        if lite is not None and of is not None:
            rows.append(
                (
                    f"pass-through overhead ≥ 10× below LiteLLM's (c={c}, p50)",
                    f"LiteLLM adds {f(lite)} ms, openfusion {f(of, 2)} ms: {f(ratio)}×",
                    verdict(ratio is not None and ratio >= 10),
                )
            )
    first = _get(results, "fusion", "stream", "1", "openfusion", "first_line", "p50")
    headers = _get(results, "fusion", "stream", "1", "openfusion", "headers", "p50")
    if first is not None:
        rows.append(
            (
                "first byte of a streamed fusion response ≤ 50 ms (c=1)",
                f"headers {f(headers)} ms, first line (keep-alive) {f(first)} ms p50",
                verdict(first <= 50),
            )
        )
    for c in ("50", "200"):
        first_c = _get(results, "fusion", "stream", c, "openfusion", "first_line", "p50")
        if first_c is not None:
            rows.append(
                (
                    f"… the same at c={c} (reported, no target)",
                    f"{f(first_c)} ms p50, "
                    f"{f(_get(results, 'fusion', 'stream', c, 'openfusion', 'first_line', 'p99'))} ms p99",
                    "–",
                )
            )
    gap = _get(results, "fusion", "stream", "1", "openfusion", "gap_ms", "p50")
    lines = _get(results, "fusion", "stream", "1", "openfusion", "data_lines")
    if gap is not None:
        rows.append(
            (
                "synthesizer tokens relayed without batching (fake sends 20 tokens 5 ms apart)",
                f"{f(lines, 0)} data lines per response, median gap {f(gap, 2)} ms at c=1",
                verdict(gap >= 3.5 and (lines or 0) >= 20),
            )
        )
    inflight = _get(results, "memory", "inflight") or {}
    if inflight:
        top = max(inflight, key=int)
        per = inflight[top]["per_stream_kb"]
        slope = _get(results, "memory", "slope_kb_per_stream")
        rows.append(
            (
                "RSS per in-flight fusion request ≤ 64 KB",
                f"{f(per)} KiB at {inflight[top]['in_flight']} in flight (slope between the two top levels: "
                f"{f(slope)} KiB)",
                verdict(per <= 64),
            )
        )
    soak = _get(results, "memory", "soak")
    if soak and "rss_after_mb" in soak:
        growth = soak["rss_after_mb"] - soak["rss_before_mb"]
        points = soak.get("checkpoints") or []
        half = points[len(points) // 2 - 1] if len(points) >= 2 else None
        late = (points[-1][1] - half[1]) if half else None
        rows.append(
            (
                "RSS flat after the soak (rule here: < 1 MiB growth over the soak's second half)",
                f"{f(soak['rss_before_mb'])} → {f(soak['rss_after_mb'])} MiB over {soak['requests']:,} requests "
                f"({growth:+.1f} MiB in all, {late:+.1f} MiB over the second half; "
                f"{f(soak['rss_after_idle_mb'])} MiB after 3 s idle)"
                if late is not None
                else f"{growth:+.1f} MiB",
                verdict(late is not None and late < 1.0),
            )
        )
    return rows


def floor_targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for the targets set against the floor arm, measured in the same run."""
    rows: list[tuple[str, str, str]] = []

    def verdict(ok: bool | None) -> str:
        return "–" if ok is None else ("met" if ok else "**not met**")

    modes = ("non_stream", "stream")
    over = {m: _get(results, "fusion", m, "1", "openfusion", "overhead", "p50") for m in modes}
    floor = {m: _get(results, "fusion", m, "1", "floor", "overhead", "p50") for m in modes}
    if all(over[m] is not None and floor[m] is not None for m in modes):
        gaps = {m: over[m] - floor[m] for m in modes}
        rows.append(
            (
                "fusion overhead at c=1, p50: within 1 ms of the floor arm's",
                "; ".join(
                    f"{m.replace('_', '-')}: openfusion {f(over[m], 2)} ms, floor {f(floor[m], 2)} ms "
                    f"(+{f(gaps[m], 2)} ms)"
                    for m in modes
                ),
                verdict(max(gaps.values()) <= 1.0),
            )
        )
    cpu = {m: proxy_cpu(_get(results, "fusion", m, "50", "openfusion") or {}) for m in modes}
    fcpu = {m: proxy_cpu(_get(results, "fusion", m, "50", "floor") or {}) for m in modes}
    if all(cpu[m] and fcpu[m] for m in modes):
        ratios = {m: cpu[m] / fcpu[m] for m in modes}  # type: ignore[operator]
        rows.append(
            (
                "proxy CPU per fusion request at c=50: at most 1.5× the floor arm's",
                "; ".join(
                    f"{m.replace('_', '-')}: openfusion {f(cpu[m], 2)} ms, floor {f(fcpu[m], 2)} ms "
                    f"({f(ratios[m], 2)}×)"
                    for m in modes
                ),
                verdict(max(ratios.values()) <= 1.5),
            )
        )
    w = results.get("workers") or {}
    row = _workers_target(w, verdict) if w.get("preset") in w else None
    if row:
        rows.append(row)
    inflight = _get(results, "memory", "inflight") or {}
    if inflight:
        top = max(inflight, key=int)
        per = inflight[top]["per_stream_kb"]
        fl = _get(results, "memory", "floor_inflight", "per_stream_kb")
        soak = _get(results, "memory", "workers_soak") or {}
        # The target is RSS, as an operator sees it; the memory in live use (printed beside) tells a leak from a
        # high-water the allocators keep, but does not change the verdict.
        flat = soak.get("flat") if soak.get("per_worker") else None
        rows.append(
            (
                "RSS per in-flight fusion stream ≤ 64 KiB, and flat over a 100k-request soak across workers",
                f"openfusion {f(per)} KiB, floor {f(fl)} KiB (at {inflight[top]['in_flight']} streams inside "
                f"synthesis; open files held: openfusion {_files(inflight[top])}, floor "
                f"{_files(_get(results, 'memory', 'floor_inflight') or {})}); {workers_soak_text(soak)}",
                verdict(per <= 64 and flat is not False),
            )
        )
    added = {
        arm: _get(results, "passthrough", "non_stream", "1", arm, "added", "p50")
        for arm in ("openfusion", "floor", "litellm")
    }
    if added["openfusion"] is not None:
        rows.append(
            (
                "pass-through added latency ≤ 1.5 ms p50 (c=1, non-stream)",
                f"openfusion {f(added['openfusion'], 2)} ms, floor {f(added['floor'], 2)} ms, LiteLLM "
                f"{f(added['litellm'], 2)} ms",
                verdict(added["openfusion"] <= 1.5),
            )
        )
    return rows


def _workers_target(w: dict[str, Any], verdict: Callable[[bool | None], str]) -> tuple[str, str, str] | None:
    """The `--workers 2` target row: the CPU-bound preset decides; the latency-bound one is reported beside it."""
    main = w[w["preset"]]
    w2, w1, fl2 = main.get("openfusion_w2") or {}, main.get("openfusion") or {}, main.get("floor_w2") or {}
    if w2.get("share_of_allowed") is None or not w1.get("overhead"):
        return None
    p99_2, p99_1 = w2["overhead"]["p99"], w1["overhead"]["p99"]
    measured = (
        f"{f(w2['rps'])} req/s of {f(w2['machine_allows_rps'])} allowed ({f(100 * w2['share_of_allowed'])}%; "
        f"{f(w2['all_cpu_ms_per_req'], 2)} ms of CPU per request in all; other jobs took "
        f"{f(w2['other_load_cores'], 2)} cores, the rest allowed {f(w2.get('free_allows_rps'))}); p99 latency "
        f"{f(p99_2)} ms vs {f(p99_1)} ms with one worker ({f(w1.get('rps'))} req/s); CPU per worker "
        f"{_splits(w2.get('cpu_split'), percent=True)}, connections per worker {_splits(w2.get('connection_split'))}; "
        f"floor with 2 processes: {f(fl2.get('rps'))} req/s of {f(fl2.get('machine_allows_rps'))} allowed "
        f"({f(100 * (fl2.get('share_of_allowed') or math.nan))}%)"
    )
    slow = w.get("bench3") or {}
    if (slow.get("openfusion_w2") or {}).get("rps") is not None:
        s2, s1 = slow["openfusion_w2"], slow.get("openfusion") or {}
        measured += (
            f". `bench3` (critical path {f(slow['critical_path_ms'], 0)} ms: a closed loop of {w['concurrency']} "
            f"cannot exceed {f(slow['concurrency_ceiling_rps'])} req/s): {f(s2['rps'])} req/s, "
            f"{f(s2['machine_allows_rps'])} allowed by the CPU, p99 overhead {q(s2, 'overhead', 'p99')} ms vs "
            f"{q(s1, 'overhead', 'p99')} ms with one worker"
        )
    return (
        f"throughput with `--workers 2` at c={w.get('concurrency')}: ≥ 90% of what the machine allows (cores ÷ "
        "CPU per request of proxy + fake + load generator), p99 overhead not worse than one worker's — measured "
        f"with streamed `{w['preset']}` (zero-latency upstream calls: only the CPU limits the closed loop), CPU "
        f"and requests counted over steady {f(w.get('window_s'))} s windows after a warm-up at full concurrency",
        measured,
        verdict(w2["share_of_allowed"] >= 0.9 and p99_2 <= p99_1),
    )


def _splits(splits: list[list[float]] | None, *, percent: bool = False) -> str:
    """Per-process shares, slice by slice: `52/48, 50/50`."""
    if not splits:
        return "–"
    return ", ".join("/".join(f"{100 * v:.0f}" if percent else f"{v:.0f}" for v in sl) for sl in splits)


def workers_soak_text(soak: dict[str, Any]) -> str:
    """The soak through `--workers N`: requests, and each worker's growth over the second half: RSS, and the memory
    in live use (Python's heap and malloc's) where the probe read it."""
    per = soak.get("per_worker") or {}
    if not per:
        return "soak across workers: not run" if not soak else f"soak across workers: {soak.get('error', 'no data')}"
    growth = ", ".join(f"{w['second_half_mb']:+.2f}" for w in per.values())
    text = (
        f"soak of {soak['requests']:,} requests through `--workers {soak['workers']}` "
        f"({soak['summary'].get('errors', '?')} errors): each worker's RSS over the second half {growth} MiB "
        f"({'flat' if soak.get('flat') else 'not flat'}: the rule is < 1 MiB each)"
    )
    live = [w.get("live_second_half_mb") for w in per.values()]
    if None in live or "no_leak" not in soak:
        return text
    trimmed = soak.get("rss_trimmed_mb") or {}
    after = ", ".join(f"{trimmed[pid]:.1f}" for pid in per if pid in trimmed)
    return (
        text
        + f"; memory in live use (Python heap + malloc) over the second half {', '.join(f'{g:+.2f}' for g in live)}"
        + f" MiB ({'no leak' if soak['no_leak'] else 'GROWING: a leak'})"
        + (f"; RSS after trimming malloc's free memory at the end {after} MiB" if after else "")
    )


def workers_section(data: dict[str, Any]) -> str:
    if "error" in data:
        return f"Failed: {data['error']}"
    parts = []
    for preset in (data.get("preset"), "bench3"):
        if preset not in data:
            continue
        run = data[preset]
        ceiling = run.get("concurrency_ceiling_rps")
        parts.append(
            f"`{preset}` (critical path {f(run.get('critical_path_ms'), 0)} ms; a closed loop of "
            f"{data.get('concurrency')} connections cannot exceed "
            + (f"{f(ceiling)} req/s, c ÷ critical path, whatever the CPU" if ceiling else "— no limit but the CPU")
            + "):\n\n"
            + _workers_table(run)
        )
    return "\n\n".join(parts)


def _workers_table(data: dict[str, Any]) -> str:
    rows = []
    for arm, s in data.items():
        if not isinstance(s, dict) or "n" not in s:
            continue
        cpu = s.get("cpu_ms_per_req", {})
        rows.append(
            [
                ARM_LABELS.get(arm, arm),
                f"{s['n']} / {s['errors']}",
                qqq(s, "overhead"),
                q(s, "first_data"),
                f(s["rps"]),
                f(proxy_cpu(s), 2),
                f(cpu.get("fake"), 2),
                f(s.get("client_cpu_ms_per_req"), 2),
                f(s.get("machine_allows_rps")),
                f(100 * s["share_of_allowed"]) if s.get("share_of_allowed") is not None else "–",
                f(s.get("free_allows_rps")),
                _splits(s.get("cpu_split"), percent=True),
                _splits(s.get("connection_split")),
                f(s.get("rss_mb")),
                f(s.get("other_load_cores"), 2),
            ]
        )
    header = [
        "arm",
        "n / errors",
        "overhead p50/p95/p99 ms",
        "first token p50",
        "req/s",
        "proxy CPU ms/req",
        "fake CPU ms/req",
        "client CPU ms/req",
        "machine allows req/s",
        "% of allowed",
        "the cores left free allow req/s",
        "CPU per process % (by slice)",
        "connections per process (by slice)",
        "proxy RSS MiB",
        "other load (cores)",
    ]
    return _table(header, rows)


# -- markdown ------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def _gib(meminfo: str) -> str:
    parts = meminfo.split()
    if len(parts) == 2 and parts[0].isdigit() and parts[1] == "kB":
        return f"{int(parts[0]) / 2**20:.1f} GiB ({meminfo})"
    return meminfo


def machine_section(results: dict[str, Any]) -> str:
    m = results["machine"]
    pk = m["packages"]
    rows = [
        [
            "CPU",
            f"{m['cpu_model']} ({'virtual machine' if m['hypervisor'] else 'bare metal'}), "
            f"{', '.join(m['cpu_mhz'])} MHz",
        ],
        ["cores (nproc)", str(m["nproc"])],
        ["memory", _gib(m["mem_total"])],
        ["kernel", m["kernel"]],
        ["Python", m["python"]],
        ["checkout", f"git {m['git_head']}{' (src/ has uncommitted changes)' if m['src_modified'] else ''}"],
        ["openfusion measured", "{version} from `{package}`".format(**results.get("openfusion_under_test", {}))],
        ["server stack", ", ".join(f"{k} {pk[k]}" for k in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools"))],
        [
            "client stack",
            ", ".join(f"{k} {pk.get(k, '?')}" for k in ("httpx", "aiohttp", "multidict", "yarl", "orjson", "tenacity")),
        ],
        ["peers", ", ".join(f"{k} {v}" for k, v in results.get("peers", {}).items()) or "none"],
        ["load average", f"{m['loadavg_start']} at start, {m.get('loadavg_end', '?')} at end"],
    ]
    return _table(["", ""], rows)


def fusion_section(data: dict[str, Any]) -> str:
    if "error" in data:
        return f"Failed: {data['error']}"
    rows = []
    for mode in ("non_stream", "stream"):
        for c, row in data.get(mode, {}).items():
            for arm, s in row.items():
                cpu = s.get("cpu_ms_per_req", {})
                rows.append(
                    [
                        mode.replace("_", "-"),
                        c,
                        ARM_LABELS.get(arm, arm),
                        f"{s['n']} / {s['errors']}",
                        qqq(s, "wall"),
                        qqq(s, "overhead"),
                        q(s, "headers"),
                        q(s, "first_line"),
                        q(s, "first_progress"),
                        q(s, "first_data"),
                        f((s.get("gap_ms") or {}).get("p50"), 2),
                        f(s["rps"]),
                        f(proxy_cpu(s), 2),
                        f(cpu.get("fake"), 2),
                        f(s.get("client_cpu_ms_per_req"), 2),
                        f(s.get("rss_mb")),
                        f(s.get("other_load_cores"), 2),
                    ]
                )
    header = [
        "mode",
        "c",
        "arm",
        "n / errors",
        "wall p50/p95/p99 ms",
        "overhead p50/p95/p99 ms",
        "headers p50",
        "first line p50",
        "first progress p50",
        "first token p50",
        "token gap p50",
        "req/s",
        "proxy CPU ms/req",
        "fake CPU ms/req",
        "client CPU ms/req",
        "proxy RSS MiB",
        "other load (cores)",
    ]
    return (
        _table(header, rows)
        + breakdown_table(data.get("breakdown") or {}, stream=False)
        + breakdown_table(data.get("breakdown_stream") or {}, stream=True)
    )


def cache_section(data: dict[str, Any]) -> str:
    if "error" in data:
        return f"Failed: {data['error']}"
    rows = []
    for mode in ("non_stream", "stream"):
        for c, row in data.get(mode, {}).items():
            for arm, s in row.items():
                calls = sum((s.get("upstream_calls_per_req") or {}).values())
                rows.append(
                    [mode.replace("_", "-"), c, arm, f"{s['n']} / {s['errors']}", qqq(s, "wall"), q(s, "headers"),
                     q(s, "first_data"), f(s["rps"]), f(proxy_cpu(s), 2), f(calls, 2), f(s.get("other_load_cores"), 2)]
                )  # fmt: skip
    header = ["mode", "c", "arm", "n / errors", "wall p50/p95/p99 ms", "headers p50", "first token p50", "req/s",
              "proxy CPU ms/req", "upstream calls/req", "other load (cores)"]  # fmt: skip
    counted = data.get("hits_counted")
    note = f'\n\nHits the server counted (`openfusion_cache_lookups_total{{result="hit"}}`): {f(counted, 0)}.'
    return _table(header, rows) + note


def breakdown_table(data: dict[str, Any], *, stream: bool) -> str:
    """Where the c=1 overhead goes, segment by segment, the ideal client beside openfusion."""
    p50 = data.get("p50_ms") or {}
    ideal, floor, of = p50.get("ideal") or {}, p50.get("floor") or {}, p50.get("openfusion") or {}
    if not ideal or not of:
        return ""
    from bench.scenarios import SEGMENTS

    rows = [
        [
            name,
            what,
            f(ideal.get(name), 2),
            f(floor.get(name), 2),
            f(of.get(name), 2),
            f(of.get(name, 0) - floor.get(name, math.nan), 2),
        ]
        for name, what in SEGMENTS
    ]
    n = data.get("n") or {}
    return (
        f"\n\n**Where the c=1 overhead goes, {'streamed' if stream else 'non-stream'}** (one request at a time, "
        "each arm's requests back to back, two rounds in swapped order; "
        f"n = {n.get('ideal')} / {n.get('floor')} / {n.get('openfusion')}). The fake records each call's arrival "
        "and end and the client its send and finish, on the machine's one monotonic clock; p50 ms per segment:\n\n"
        + _table(["segment", "what", "ideal", "floor", "openfusion", "openfusion − floor"], rows)
    )


def passthrough_section(data: dict[str, Any]) -> str:
    if "error" in data:
        return f"Failed: {data['error']}"
    rows = []
    for mode in ("non_stream", "stream"):
        for c, row in data.get(mode, {}).items():
            for arm, s in row.items():
                if not isinstance(s, dict):
                    continue
                rows.append(
                    [
                        mode.replace("_", "-"),
                        c,
                        ARM_LABELS.get(arm, arm),
                        f"{s['n']} / {s['errors']}",
                        qqq(s, "wall"),
                        qqq(s, "added") if arm != "direct" else "–",
                        f(s.get("ratio_p50"), 2),
                        q(s, "first_data") if mode == "stream" else "–",
                        f(s["rps"]),
                        f(proxy_cpu(s), 2),
                        f((s.get("cpu_ms_per_req") or {}).get("fake"), 2),
                        f(s.get("rss_mb")),
                        f(s.get("other_load_cores"), 2),
                    ]
                )
            ratio = row.get("litellm_over_openfusion_added_p50")
            if ratio is not None:
                rows.append(
                    [
                        mode.replace("_", "-"),
                        c,
                        "LiteLLM added ÷ openfusion added (p50)",
                        "",
                        "",
                        f(ratio),
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                    ]
                )
    header = [
        "mode",
        "c",
        "arm",
        "n / errors",
        "wall p50/p95/p99 ms",
        "added p50/p95/p99 ms",
        "wall ratio p50",
        "first data p50",
        "req/s",
        "proxy CPU ms/req",
        "fake CPU ms/req",
        "proxy RSS MiB",
        "other load (cores)",
    ]
    return _table(header, rows)


def optillm_section(data: dict[str, Any]) -> str:
    if "error" in data or "skipped" in data:
        return f"Not run: {data.get('error') or data.get('skipped')}"
    rows = []
    for c, row in data.items():
        if not c.isdigit():
            continue
        for arm, s in row.items():
            calls = s.get("upstream_calls_per_req", {})
            rows.append(
                [
                    c,
                    ARM_LABELS.get(arm, arm),
                    f"{s['n']} / {s['errors']}",
                    ", ".join(f"{k} {v:.2f}" for k, v in calls.items()),
                    f(s.get("own_critical_path_ms"), 0),
                    qqq(s, "wall"),
                    q(s, "overhead"),
                    f(s.get("wall_over_critical_p50"), 2),
                    f(s["rps"]),
                    f(proxy_cpu(s), 2),
                    f(s.get("rss_mb")),
                    f(s.get("other_load_cores"), 2),
                ]
            )
    header = [
        "c",
        "arm",
        "n / errors",
        "upstream calls per request",
        "own critical path ms",
        "wall p50/p95/p99 ms",
        "overhead p50 ms",
        "wall ÷ critical path",
        "req/s",
        "proxy CPU ms/req",
        "proxy RSS MiB",
        "other load (cores)",
    ]
    return _table(header, rows)


def tail_section(data: dict[str, Any]) -> str:
    if "error" in data:
        return f"Failed: {data['error']}"
    parts = []
    if data.get("deadline_supported"):
        parts.append(
            f"openfusion accepted `panel_deadline_s = {data['deadline_s']}` in a preset, so the deadline arms ran "
            "beside the no-deadline arm."
        )
    else:
        parts.append(
            f"openfusion refused a preset with `panel_deadline_s = {data['deadline_s']}` "
            f"(`{data.get('deadline_probe', '')}`): it has no panel deadline, only the no-deadline arm ran."
        )
    parts.append(
        f"Panel: 100 ms, 150 ms and a third panelist that takes {data['slow_panelist_ms']} ms (*slow*) or never "
        "answers (*hung*); judge 50 ms, synthesizer 50 ms + 20 tokens × 5 ms. Each wave sends c requests at "
        "once. 'over expected' = wall − the expected wall of that arm."
    )
    rows = []
    for arm, spec in data.get("arms", {}).items():
        for name, s in spec["waves"].items():
            rows.append(
                [
                    arm,
                    f(spec["expected_ms"], 0),
                    name,
                    f"{s['n']} / {s['errors']}",
                    qqq(s, "wall"),
                    qqq(s, "overhead"),
                    q(s, "first_line"),
                    q(s, "first_progress"),
                    f(s.get("keepalives"), 0),
                    f(proxy_cpu(s), 2),
                ]
            )
    parts.append(
        _table(
            [
                "arm",
                "expected wall ms",
                "wave",
                "n / errors",
                "wall p50/p95/p99 ms",
                "over expected p50/p95/p99",
                "first line p50",
                "first progress p50",
                "keep-alives",
                "proxy CPU ms/req",
            ],
            rows,
        )
    )
    errors = [
        f"{arm} {name}: {s['error_example']}"
        for arm, spec in data.get("arms", {}).items()
        for name, s in spec["waves"].items()
        if s.get("error_example")
    ]
    if errors:
        parts.append("Errors seen: " + "; ".join(errors[:4]))
    return "\n\n".join(parts)


def _files(held: dict[str, Any]) -> str:
    """Open files before the streams and while they were held (absent from runs before they were counted)."""
    if "open_files_held" not in held:
        return "–"
    return f"{held['open_files_before']:,} → {held['open_files_held']:,}"


def memory_section(data: dict[str, Any]) -> str:
    if "error" in data:
        return f"Failed: {data['error']}"
    rows = []
    for n, s in data.get("inflight", {}).items():
        rows.append(
            [
                n,
                str(s["in_flight"]),
                ", ".join(f"{k} {v}" for k, v in s["errors"].items()) or "0",
                f(s["ramp_s"], 2),
                f(s["rss_before_mb"]),
                f(s["rss_held_mb"]),
                f(s["rss_after_release_mb"]),
                f(s["per_stream_kb"]),
                _files(s),
                f(s["fake_rss_mb"]),
            ]
        )
    parts = [
        f"Warm idle RSS: {f(data.get('rss_idle_warm_mb'))} MiB.",
        _table(
            [
                "streams opened",
                "reached synthesis",
                "errors",
                "ramp s",
                "RSS before MiB",
                "RSS held MiB",
                "RSS after release MiB",
                "per stream KiB",
                "open files before → held",
                "fake RSS MiB",
            ],
            rows,
        ),
    ]
    ag = data.get("agent_inflight")
    if ag:
        parts.append(
            f"With a coding agent's conversation ({f(ag.get('body_kb'), 0)} KB, `bench.load.agent_body`) instead of "
            f"the one-line question, {ag['in_flight']} fusion streams held inside synthesis through a fresh instance: "
            f"RSS {f(ag['rss_before_mb'])} → {f(ag['rss_held_mb'])} MiB, {f(ag['per_stream_kb'])} KiB per stream "
            f"(ramp {f(ag['ramp_s'], 2)} s, open files {_files(ag)}, errors: {ag['errors'] or 0})."
        )
    pt = data.get("passthrough_inflight")
    if pt:
        parts.append(
            f"For comparison, {pt['in_flight']} pass-through streams of the same slow model held through a fresh "
            f"instance: RSS {f(pt['rss_before_mb'])} → {f(pt['rss_held_mb'])} MiB, {f(pt['per_stream_kb'])} KiB per "
            f"stream (errors: {pt['errors'] or 0})."
        )
    fl = data.get("floor_inflight")
    if fl:
        parts.append(
            f"The floor arm (raw aiohttp, fresh) holding {fl['in_flight']} of the same fusion streams: RSS "
            f"{f(fl['rss_before_mb'])} → {f(fl['rss_held_mb'])} MiB, {f(fl['per_stream_kb'])} KiB per stream, "
            f"open files {_files(fl)} (errors: {fl['errors'] or 0})."
        )
    parts.append(
        "RSS per held stream follows the burst's peak, not only what a held stream keeps: memory freed after the "
        "ramp stays with the process. Beyond each held stream's client and synthesizer connections, the open "
        "files count the upstream connections the ramp opened and left idle in the pool: the quicker the ramp, "
        "the more requests were between their panel and their synthesizer at once, and the higher the peak."
    )
    if data.get("slope_kb_per_stream") is not None:
        parts.append(f"Slope between the two largest levels: {f(data['slope_kb_per_stream'])} KiB per stream.")
    soak = data.get("soak") or {}
    if soak:
        s = soak.get("summary", {})
        parts.append(
            f"Soak (fresh instance, `fusion/fast0`, half streamed, c=50): {soak.get('requests', 0):,} requests, "
            f"{s.get('errors', '?')} errors, {f(s.get('rps'))} req/s, proxy CPU {f(proxy_cpu(s), 2)} ms/req. RSS "
            f"{f(soak.get('rss_fresh_mb'))} MiB fresh, {f(soak.get('rss_before_mb'))} MiB after 200 warm-up "
            f"requests, {f(soak.get('rss_after_mb'))} MiB after the soak, {f(soak.get('rss_after_idle_mb'))} MiB "
            f"after 3 s idle ({f(soak.get('growth_kb_per_1k_requests'))} KiB per 1,000 requests over the whole "
            f"soak, {f(soak.get('growth_second_half_kb_per_1k'))} over its second half)."
        )
        points = soak.get("checkpoints") or []
        if points:
            parts.append(
                _table(["requests done", *[f"{n:,}" for n, _ in points]], [["RSS MiB", *[f(v) for _, v in points]]])
            )
    wsoak = data.get("workers_soak") or {}
    if wsoak.get("checkpoints"):
        s = wsoak.get("summary", {})
        parts.append(
            f"Soak across workers (fresh `openfusion serve --workers {wsoak['workers']}`, `fusion/fast0`, half "
            f"streamed, c=50): {wsoak['requests']:,} requests in {f(wsoak['checkpoints'][-1]['t_s'])} s, "
            f"{s.get('errors', '?')} errors, {f(s.get('rps'))} req/s; {workers_soak_text(wsoak)}."
        )
        pids = sorted({pid for c in wsoak["checkpoints"] for pid in c["rss_mb"]})
        step = max(1, len(wsoak["checkpoints"]) // 10)
        shown = wsoak["checkpoints"][step - 1 :: step]
        parts.append(
            _table(
                ["requests done", *[f"{c['requests']:,}" for c in shown]],
                [[f"worker {pid} RSS MiB", *[f(c["rss_mb"].get(pid)) for c in shown]] for pid in pids]
                + [
                    [f"worker {pid} live MiB", *[f(c.get("live_mb", {}).get(pid)) for c in shown]]
                    for pid in pids
                    if any(c.get("live_mb", {}).get(pid) is not None for c in shown)
                ],
            )
        )
    return "\n\n".join(parts)


def profile_section(data: dict[str, Any]) -> str:
    if not data:
        return "Not run (quick mode, or `--only` left it out)."
    if "error" in data:
        return f"Failed: {data['error']}"
    parts = []
    for key, title in (("requests", "short answers: the per-request path"), ("tokens", "long answers: per token")):
        if key in data:
            parts.append(f"### Profile — {title}")
            parts.append(_one_profile(data[key]))
    tc = data.get("token_cost")
    if tc:
        parts.append(
            f"Price of a relayed synthesizer token (streamed fusion at c=10, no profiler): proxy CPU "
            f"{f(tc['cpu_ms_8_tokens'], 2)} ms per request with 8 tokens, {f(tc['cpu_ms_408_tokens'], 2)} ms with "
            f"408 ({f(tc['data_lines_408'], 0)} content chunks relayed): **{f(tc['us_per_token'])} µs per token**."
        )
    return "\n\n".join(parts)


def _one_profile(data: dict[str, Any]) -> str:
    if "error" in data:
        return f"Failed: {data['error']}"
    s = data.get("summary_under_profiler", {})
    per_req = proxy_cpu(s) or 0.0

    def ms(share: float) -> str:
        return f(share / 100 * per_req, 3)

    parts = [
        f"`{data['command']}` while the harness sent {data['load']} "
        f"({s.get('n', 0)} requests, {f(s.get('rps'))} req/s under the profiler, proxy CPU "
        f"{f(per_req, 2)} ms/req). {data.get('samples', 0):,} samples of the thread holding the GIL; "
        "'ms/req' = share × the proxy's CPU per request (an estimate: native work outside the GIL is not sampled).",
        "Self time by package/module:",
        _table(
            ["package / module", "% of samples", "≈ ms/req"],
            [[k, f(v), ms(v)] for k, v in data.get("packages", [])[:15]],
        ),
        "Self time by function (top 20):",
        _table(
            ["function (file)", "% self", "≈ ms/req"], [[f"`{k}`", f(v), ms(v)] for k, v in data.get("self", [])[:20]]
        ),
        "Inclusive time by function (top 30):",
        _table(
            ["function (file)", "% inclusive", "≈ ms/req"],
            [[f"`{k}`", f(v), ms(v)] for k, v in data.get("inclusive", [])[:30]],
        ),
    ]
    return "\n\n".join(parts)


def load_section(results: dict[str, Any]) -> str:
    samples = results.get("loadavg_samples") or []
    others = []
    for scen in ("fusion", "passthrough", "optillm"):
        data = results.get(scen) or {}
        for row in data.values():
            if isinstance(row, dict):
                for sub in row.values():
                    if isinstance(sub, dict):
                        for s in sub.values():
                            if isinstance(s, dict) and "other_load_cores" in s:
                                others.append(s["other_load_cores"])
                    if isinstance(sub, dict) and "other_load_cores" in sub:
                        others.append(sub["other_load_cores"])
    lines = []
    if samples:
        loads = [v for _, v in samples]
        lines.append(
            f"1-minute load average sampled every 5 s during the run: min {min(loads):.2f}, median "
            f"{sorted(loads)[len(loads) // 2]:.2f}, max {max(loads):.2f} (2 cores; the harness's own processes count)."
        )
    if others:
        others.sort()
        lines.append(
            f"CPU burnt by processes other than the benchmark's own during measured slices (other engineers' "
            f"jobs in the same machine): median {others[len(others) // 2]:.2f} cores, max {others[-1]:.2f} cores "
            f"(per slice, from /proc/stat minus our processes; see the 'other load' columns)."
        )
    return "\n".join(f"- {line}" for line in lines + list(results.get("notes", [])))


def markdown(results: dict[str, Any], chart: str | None) -> str:
    plan = results["plan"]
    fusion = results.get("fusion") or {}
    sections = [
        f"# openfusion benchmarks — {results['mode']} run, "
        f"{results.get('finished_utc') or time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "Generated by `bench/run.py`; every number below was measured in this run. Times in milliseconds "
        "unless stated. Percentiles are nearest-rank over all samples of an arm (n is given); an *added* "
        "percentile is the arm's percentile minus the direct one (so tails can even come out negative). CPU per "
        "request is the process's CPU time over the slice (per-thread schedstat) divided by the requests "
        "completed in it.",
        "## Targets against the floor arm",
        "The floor arm (`bench/floor.py`) is a raw aiohttp proxy on uvloop making the same five calls as a fusion "
        "(three panelists at once, the judge, the synthesizer streamed back) with no validation, records or "
        "framework, run interleaved with openfusion against the same fake upstream and load generator.",
        _table(["target", "measured", "verdict"], [list(r) for r in floor_targets(results)]),
        "## Absolute targets",
        _table(["target", "measured", "verdict"], [list(r) for r in targets(results)]),
        "## Machine",
        machine_section(results),
        "## Commands",
        "```\n"
        + f"{results['argv']}\n\n"
        + "\n".join(f"{name}: {cmd}" for name, cmd in results.get("commands", {}).items())
        + "\n```",
        f"Service start-up times (s): {', '.join(f'{k} {v:.1f}' for k, v in results.get('startup_s', {}).items())}. "
        f"Scenario times (s): {', '.join(f'{k} {v:.0f}' for k, v in results.get('timings_s', {}).items())}; "
        f"total {results.get('total_s', 0):.0f} s.",
        f"Plan: {', '.join(f'{k}={v}' for k, v in plan.items())}.",
        "## Load on the machine during the run",
        load_section(results),
    ]
    if chart:
        sections += ["## Overhead vs concurrency", f"![overhead vs concurrency]({chart})"]
    sections += [
        "## 1. Fusion overhead",
        f"Preset `bench3` (panel 100/150/200 ms, judge 50 ms, synthesizer 50 ms then 20 tokens 5 ms apart): "
        f"nominal critical path {f(fusion.get('critical_path_ms'), 0)} ms. Overhead = wall − critical path. "
        "The *ideal* arm is the load generator making the same five calls itself (panel concurrently): "
        "its overhead is the floor set by the fake, loopback and timer slack; openfusion's minus the ideal's is "
        "what orchestration adds. 'first line' is the first body line (openfusion's keep-alive comment); "
        "'first progress' the first `delta.reasoning` progress chunk; 'first token' the first answer content.",
        fusion_section(fusion) if fusion else "Not run.",
        "## 1b. Throughput with two workers",
        "Streamed fusion at c=200 through one and two processes of openfusion (`--workers 2`) and of the floor arm, "
        "interleaved. Each slice runs at full concurrency through a warm-up (connections opened, the first "
        "synchronised wave past), then CPU and completed requests are counted over a steady window, before the "
        "drain. *Machine allows* = cores ÷ (CPU per request of the proxy + the fake upstream + the load "
        "generator), from the same windows: what a perfectly parallel server would reach with every core busy "
        "(other people's jobs on the machine take from it too: see 'other load'). `fast0` (every upstream call "
        "answers at once) leaves the CPU as the only limit and decides the target; `bench3` (full mode) is "
        "latency-bound too. Per process: each worker's share of the proxy's CPU, and the client connections "
        "each held at the end of the window (which worker accepted them).",
        workers_section(results.get("workers") or {}) if results.get("workers") else "Not run.",
        "## 2. Pass-through overhead",
        f"Model `{(results.get('passthrough') or {}).get('model', 'fake/lat-0')}` (a zero-latency fake answer): "
        "the same request bytes go directly to the fake, through the floor arm, openfusion and LiteLLM, arms "
        "interleaved round by round. added = arm p50 − direct p50 (and likewise for p95/p99).",
        passthrough_section(results.get("passthrough") or {}) if results.get("passthrough") else "Not run.",
        "## 3. OptiLLM `moa` vs openfusion on the same fake",
        "Both arms get one user message and use the fake's 100 ms model for every call. OptiLLM's moa makes its "
        "calls one after another (n=3 completions, a critique, a final answer); openfusion asks 3 panelists "
        "concurrently, then the judge, then the synthesizer. Own critical path = 100 ms × sequential stages.",
        optillm_section(results.get("optillm") or {}) if results.get("optillm") else "Not run.",
        "## 4. Tail: one panelist hangs",
        tail_section(results.get("tail") or {}) if results.get("tail") else "Not run.",
        "## 5. Memory",
        "Streams to `fusion/hold` (panel and judge instant, synthesizer 1200 tokens 100 ms apart): the harness "
        "opens N at once, keeps reading each, waits until every one has its first token (all N are then inside "
        "synthesis), reads RSS, then closes them.",
        memory_section(results.get("memory") or {}) if results.get("memory") else "Not run.",
        "## 6. Profile of the fusion path under load",
        profile_section(results.get("profile") or {}),
        "## 7. Result cache: the hit path",
        "Preset `bench3cached` (bench3 with `cache_ttl_s`): one request primes the cache, then the *hit* arms "
        "repeat it — on the main instance the entry is in the activity database (SQLite), on a second instance "
        '(`[cache] backend = "memory"`) in process memory; the *bypass* arm sends the same request with '
        "`X-Openfusion-Cache: bypass`, so it runs the whole fusion (395 ms critical path). 'upstream calls/req' "
        "is what the fake saw per request: 0 for hits.",
        cache_section(results["cache"]) if results.get("cache") else "Not run.",
        "## What the numbers led to",
        "Each optimisation these runs pointed at, measured before/after with `python -m bench.ab`, is kept in "
        "[OPTIMISATIONS.md](OPTIMISATIONS.md) (this report is regenerated; that history is not).",
    ]
    return "\n\n".join(sections) + "\n"


# -- chart ---------------------------------------------------------------------------------------


def chart(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    series: dict[str, tuple[list[int], list[float], list[float]]] = {}

    def add(label: str, c: str, summary: dict[str, Any] | None, key: str) -> None:
        if not summary or key not in summary:
            return
        xs, ys, cpus = series.setdefault(label, ([], [], []))
        xs.append(int(c))
        ys.append(max(0.1, summary[key]["p50"]))  # a log axis: anything at or below 0.1 ms is drawn at 0.1
        cpus.append(proxy_cpu(summary) or math.nan)

    for c, row in (_get(results, "fusion", "non_stream") or {}).items():
        add("openfusion fusion, non-stream", c, row.get("openfusion"), "overhead")
        add("ideal client, non-stream", c, row.get("ideal"), "overhead")
        add("floor arm (raw aiohttp), non-stream", c, row.get("floor"), "overhead")
    for c, row in (_get(results, "fusion", "stream") or {}).items():
        add("openfusion fusion, stream", c, row.get("openfusion"), "overhead")
    for c, row in (_get(results, "passthrough", "non_stream") or {}).items():
        add("openfusion pass-through", c, row.get("openfusion"), "added")
        add("floor arm pass-through", c, row.get("floor"), "added")
        add("LiteLLM pass-through", c, row.get("litellm"), "added")
    optillm = results.get("optillm") or {}
    for c, row in optillm.items():
        if c.isdigit():
            add("OptiLLM moa (over own critical path)", c, row.get("optillm_moa"), "overhead")
            add("openfusion moa3 (over own critical path)", c, row.get("openfusion"), "overhead")
    if not series:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, (xs, ys, cpus)) in enumerate(series.items()):
        style = "--" if "LiteLLM" in label or "OptiLLM" in label else "-"
        color = colors[i % len(colors)]
        ax1.plot(xs, ys, style, marker="o", label=label, color=color)
        if "ideal" not in label:  # the ideal client runs no proxy: it has no proxy CPU
            ax2.plot(xs, cpus, style, marker="o", label=label, color=color)
    for ax in (ax1, ax2):
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks([1, 50, 200])
        ax.set_xticklabels(["1", "50", "200"])
        ax.set_yscale("log")
        ax.set_xlabel("concurrency")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_ylabel("added latency p50 (ms, log; ≤ 0.1 drawn at 0.1)")
    ax1.set_title("latency added over the critical path / direct call")
    ax2.set_ylabel("proxy CPU per request (ms)")
    ax2.set_title("proxy CPU per request")
    ax1.legend(fontsize=7.5, loc="upper left")
    fig.suptitle(
        f"openfusion vs peers, {results['machine']['nproc']} cores, fake upstream on loopback ({results['mode']} run)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(results: dict[str, Any], out: Path) -> list[Path]:
    paths = []
    png = out / "overhead.png"
    has_chart = chart(results, png)
    if has_chart:
        paths.append(png)
    md = out / "RESULTS.md"
    md.write_text(markdown(results, png.name if has_chart else None), encoding="utf-8")
    paths.append(md)
    js = out / "results.json"
    js.write_bytes(dumps(results))
    paths.append(js)
    return paths


def console_summary(results: dict[str, Any]) -> str:
    lines = ["", "Targets:"]
    for target, measured, verdict in floor_targets(results) + targets(results):
        lines.append(f"  [{verdict.strip('*')}] {target}: {measured}")
    return "\n".join(lines)
