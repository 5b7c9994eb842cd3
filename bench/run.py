"""Run the benchmarks and write the report.

    python -m bench --quick          # < 1 min: every scenario, short; peers only if their venvs are cached
    python -m bench                  # full run: writes bench/RESULTS.md, bench/results.json, bench/overhead.png

All traffic goes to 127.0.0.1; every loop is bounded in time and count; every process started
here is stopped before exit.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import envs, report, scenarios
from bench.harness import REPO, Bench, run_harness
from bench.procs import loadavg

SCENARIOS = ("fusion", "workers", "passthrough", "optillm", "tail", "memory", "profile", "cache")
PASS_MODELS = ["fake/lat-0"]


def _versions() -> dict[str, str]:
    names = ["openfusion", "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "httpx", "multidict", "yarl"]
    names += ["aiohttp", "pydantic", "orjson", "tenacity", "py-spy", "matplotlib"]
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    mhz = sorted({line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("cpu MHz")})
    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    git = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no", "src")
    return {
        "cpu_model": model,
        "cpu_mhz": mhz,
        "hypervisor": "hypervisor" in flags.split(),
        "nproc": os.cpu_count(),
        "mem_total": mem.split(":", 1)[1].strip(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "packages": _versions(),
        "git_head": git,
        "src_modified": bool(dirty),
        "loadavg_start": loadavg(),
    }


def _openfusion_origin(exe: str) -> dict[str, str]:
    """Which openfusion the harness starts: its executable, version and where its package lives."""
    python = Path(exe).parent / "python"
    code = "import openfusion, importlib.metadata as m; print(m.version('openfusion')); print(openfusion.__file__)"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False).stdout.split()
    return {"executable": exe, "version": out[0] if out else "?", "package": out[1] if len(out) > 1 else "?"}


def _git(*args: str) -> str:
    # Read-only queries: the harness never changes the repository.
    out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)
    return out.stdout.strip()


class LoadSampler:
    """Samples /proc/loadavg every few seconds in a thread, so the report can say how busy the box was."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append((time.monotonic() - self._t0, float(loadavg().split()[0])))

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = scenarios.QUICK if args.quick else scenarios.FULL
    run_dir = Path(args.run_dir or f"/tmp/openfusion-bench/run-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - set-up, nothing else is running yet
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    if plan.quick:
        only.discard("profile")
    results: dict[str, Any] = {
        "mode": "quick" if plan.quick else "full",
        "plan": plan.__dict__,
        "machine": machine(),
        "argv": " ".join(["python -m bench", *(shlex.quote(a) for a in sys.argv[1:])]),
        "run_dir": str(run_dir),
        "notes": [],
        "timings_s": {},
    }
    peers = _peers(args, plan, results["notes"])
    results["peers"] = {name: envs.PEERS[name].version() for name in peers}
    if args.snapshot:
        args.openfusion_bin, label = envs.snapshot_openfusion(REPO)
        results["notes"].insert(0, label)
    bench = Bench(run_dir, openfusion_bin=args.openfusion_bin)
    results["openfusion_under_test"] = _openfusion_origin(bench.openfusion_exe())
    if args.label:
        results["notes"].insert(0, args.label)
    started = time.monotonic()
    try:
        bench.start_fake()
        bench.start_openfusion("openfusion", scenarios.main_presets())
        bench.start_floor("floor", scenarios.floor_presets())
        if plan.access_log_arm and "passthrough" in only:
            bench.start_openfusion("openfusion_accesslog", scenarios.main_presets(), access_log=True)
        with LoadSampler() as sampler:
            for name in SCENARIOS:
                if name not in only:
                    continue
                t0 = time.monotonic()
                print(f"== {name} ({time.monotonic() - started:.0f} s into the run, load {loadavg()})", flush=True)  # noqa: T201
                try:
                    results[name] = await _scenario(name, bench, plan, peers, results["notes"])
                except Exception as exc:  # one broken scenario must not lose the others' numbers
                    results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                    results["notes"].append(f"scenario {name} failed: {type(exc).__name__}: {exc}")
                    print(f"!! {name} failed: {exc}", flush=True)  # noqa: T201
                results["timings_s"][name] = time.monotonic() - t0
            results["loadavg_samples"] = sampler.samples
    finally:
        await bench.close_sessions()
        bench.stop_all()
    results["commands"] = bench.commands
    results["startup_s"] = bench.startup_s
    results["total_s"] = time.monotonic() - started
    results["finished_utc"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["machine"]["loadavg_end"] = loadavg()
    return results


async def _scenario(
    name: str,
    bench: Bench,
    plan: scenarios.Plan,
    peers: list[str],
    notes: list[str],
) -> dict[str, Any]:
    if name == "fusion":
        return await scenarios.fusion_overhead(bench, plan)
    if name == "workers":
        return await scenarios.workers(bench, plan)
    if name == "passthrough":
        # The peers run only during their own scenario: an idle LiteLLM still burns CPU on timers.
        active = list(peers)
        if "litellm" in active:
            try:
                bench.start_litellm(PASS_MODELS)
            except RuntimeError as exc:
                notes.append(f"LiteLLM did not start: {exc}"[:500])
                active.remove("litellm")
        try:
            return await scenarios.passthrough(bench, plan, peers=active)
        finally:
            bench.stop("litellm")
    if name == "optillm":
        if "optillm" not in peers:
            return {"skipped": "OptiLLM venv not available"}
        bench.start_optillm()
        try:
            return await scenarios.optillm_moa(bench, plan)
        finally:
            bench.stop("optillm")
    if name == "tail":
        return await scenarios.tail(bench, plan)
    if name == "memory":
        return await scenarios.memory(bench, plan)
    if name == "profile":
        return await scenarios.profile(bench, plan)
    if name == "cache":
        # The same presets with the cache in process memory: the hit path without a database read.
        bench.start_openfusion("openfusion_memcache", scenarios.main_presets(), http_extra=scenarios.MEMORY_CACHE)
        try:
            return await scenarios.cache_hits(bench, plan)
        finally:
            bench.stop("openfusion_memcache")
    raise ValueError(name)


def _peers(args: argparse.Namespace, plan: scenarios.Plan, notes: list[str]) -> list[str]:
    """Which peers run: `auto` = all in full mode (installing missing venvs), none in quick mode."""
    chosen = []
    if args.peers == "no" or (args.peers == "auto" and plan.quick):
        notes.append("peers (LiteLLM, OptiLLM) not run" + (" in quick mode" if plan.quick else ""))
        return chosen
    for name, peer in envs.PEERS.items():
        if peer.ready():
            chosen.append(name)
        else:
            print(f"[envs] creating the {name} venv in {peer.venv} (cached for later runs)", flush=True)  # noqa: T201
            try:
                envs.ensure(peer, log=Path(f"/tmp/openfusion-bench/{name}-install.log"))
                chosen.append(name)
            except subprocess.CalledProcessError as exc:
                notes.append(f"{name} could not be installed: {exc}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run for CI (under a minute)")
    parser.add_argument(
        "--peers", choices=["auto", "yes", "no"], default="auto", help="LiteLLM/OptiLLM arms (auto: full mode only)"
    )
    parser.add_argument(
        "--snapshot",
        action="store_true",
        help="measure a frozen copy of the checkout (installed into its own venv), not the live editable one",
    )
    parser.add_argument("--only", help=f"comma-separated subset of: {','.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, help="report directory (default: bench/ for full, the run dir for quick)")
    parser.add_argument("--openfusion-bin", help="the `openfusion` executable to measure (default: next to python)")
    parser.add_argument("--label", help="a note on what is measured, printed at the top of the report's notes")
    parser.add_argument("--run-dir", help="where logs and generated configs go (default /tmp/openfusion-bench/run-*)")
    args = parser.parse_args(argv)
    results = run_harness(run(args))
    out = args.out or (Path(results["run_dir"]) if args.quick else Path(__file__).resolve().parent)
    out.mkdir(parents=True, exist_ok=True)
    paths = report.write(results, out)
    print(report.console_summary(results), flush=True)  # noqa: T201
    print(f"total {results['total_s']:.0f} s; wrote {', '.join(str(p) for p in paths)}", flush=True)  # noqa: T201
    failed = [name for name in SCENARIOS if isinstance(results.get(name), dict) and "error" in results[name]]
    if failed:
        print(f"scenarios that failed: {', '.join(failed)}", flush=True)  # noqa: T201
    return 1 if failed else 0  # no assertion about speed: only that every scenario produced numbers


if __name__ == "__main__":
    sys.exit(main())
