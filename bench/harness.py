"""The bench harness: the fake upstream, openfusion and the peers as subprocesses; measured slices of load."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench import envs
from bench.load import LoopResult, RequestFn, Sample, closed_loop, summarize
from bench.procs import Service, connections_by_pid, cpu_delta, free_port, loadavg, machine_busy_seconds, raise_fd_limit

REPO = Path(__file__).resolve().parents[1]
# What a service's command is run under, if anything: the service with its command changed.
Wrap = Callable[[Service], Service]
MASTER_KEY = "sk-bench"  # LiteLLM refuses to start without one; every arm gets the same header
# Providers over the same fake that speak the Responses API and Anthropic Messages themselves: a request on that surface
# for one of their models is forwarded as sent and its answer relayed as the fake streams it (the native pass-through).
NATIVE_PROVIDERS = {"fakeresponses": "responses", "fakemessages": "messages"}
# A client key (the gateway mode): a server started `keyed` checks it on every request and masks it in what it relays
# (the bench's providers have no key: without a client key, there is no secret to mask).
CLIENT_KEY = "sk-bench-client-5f0c7a2e9d41b863"
_KEY_ENV = "OPENFUSION_BENCH_CLIENT_KEY"


@dataclass
class Slice:
    """One arm's share of a measurement: samples plus the CPU every process spent meanwhile."""

    samples: list[Sample]
    elapsed: float
    completed: int
    cpu: dict[str, float]  # CPU seconds per running service (all count for the machine-load estimate)
    watched: list[str]  # the services whose CPU per request is reported (the arm's proxy and the fake)
    client_cpu: float  # the harness (load generator) itself
    busy: float  # CPU seconds the whole machine was busy
    calls: dict[str, int] = field(default_factory=dict)  # upstream calls the fake saw, per kind
    rss: dict[str, int] = field(default_factory=dict)
    loadavg: str = ""
    # CPU seconds of each process of a watched service (a supervisor and its workers), by pid.
    cpu_by_pid: dict[str, dict[int, float]] = field(default_factory=dict)
    # Client connections each of those processes held at the end of a steady window, by pid.
    connections_by_pid: dict[str, dict[int, int]] = field(default_factory=dict)


def aggregate(slices: Sequence[Slice], *, base_s: float = 0.0, proxy: str | None = None) -> dict[str, Any]:
    """Merge an arm's slices (interleaved rounds) into one summary."""
    samples = [s for sl in slices for s in sl.samples]
    elapsed = sum(sl.elapsed for sl in slices)
    completed = sum(sl.completed for sl in slices) or 1
    out = summarize(samples, elapsed=elapsed, completed=completed, base_s=base_s)
    names = {name for sl in slices for name in sl.cpu}
    cpu = {name: sum(sl.cpu.get(name, 0.0) for sl in slices) for name in names}
    watched = {name for sl in slices for name in sl.watched}
    out["cpu_ms_per_req"] = {name: cpu[name] * 1000 / completed for name in sorted(watched)}
    client = sum(sl.client_cpu for sl in slices)
    out["client_cpu_ms_per_req"] = client * 1000 / completed
    busy = sum(sl.busy for sl in slices)
    # What the rest of the machine (other engineers' jobs) burnt meanwhile, in cores.
    out["other_load_cores"] = max(0.0, busy - sum(cpu.values()) - client) / elapsed if elapsed else 0.0
    out["bench_cores"] = (sum(cpu.values()) + client) / elapsed if elapsed else 0.0
    kinds = {k for sl in slices for k in sl.calls}
    out["upstream_calls_per_req"] = {k: sum(sl.calls.get(k, 0) for sl in slices) / completed for k in sorted(kinds)}
    if proxy and slices[-1].rss.get(proxy):
        out["rss_mb"] = slices[-1].rss[proxy] / 2**20
    if proxy and any(sl.cpu_by_pid.get(proxy) for sl in slices):
        # Each process's share of the proxy's CPU, largest first, slice by slice (pids differ after a restart).
        out["cpu_split"] = [
            sorted((v / total for v in sl.cpu_by_pid[proxy].values()), reverse=True)
            for sl in slices
            if (total := sum(sl.cpu_by_pid.get(proxy, {}).values())) > 0
        ]
        out["connection_split"] = [
            sorted(sl.connections_by_pid.get(proxy, {}).values(), reverse=True)
            for sl in slices
            if sl.connections_by_pid.get(proxy)
        ]
    out["loadavg"] = [sl.loadavg for sl in slices]
    out["completed"] = completed
    if base_s:
        out["critical_path_ms"] = base_s * 1000
    return out


class Bench:
    """Owns the run directory, the processes started for the run, and the client sessions."""

    def __init__(self, run_dir: Path, *, openfusion_bin: str | None = None) -> None:
        self.run_dir = run_dir
        self.openfusion_bin = openfusion_bin
        self.logs = run_dir / "logs"
        self.services: dict[str, Service] = {}
        self.commands: dict[str, str] = {}
        self.startup_s: dict[str, float] = {}
        self.fake: Service | None = None
        self._sessions: list[aiohttp.ClientSession] = []

    # -- processes ---------------------------------------------------------------------------

    def _start(self, service: Service, timeout: float = 60.0, *, wrap: Wrap | None = None) -> Service:
        if wrap is not None:  # e.g. run under a profiler (`bench.instructions`)
            service = wrap(service)
        self.services[service.name] = service
        self.commands[service.name] = " ".join(service.argv)
        service.start()
        self.startup_s[service.name] = service.wait_ready(timeout)
        return service

    def stop(self, name: str) -> None:
        service = self.services.pop(name, None)
        if service is not None:
            service.stop()

    def stop_all(self) -> None:
        for name in list(self.services):
            self.stop(name)

    def start_fake(self) -> Service:
        port = free_port()
        argv = [sys.executable, "-m", "bench.fakeup", "--port", str(port)]
        self.fake = self._start(Service("fake", argv, port, "/health", log_dir=self.logs, cwd=REPO))
        return self.fake

    def start_floor(
        self,
        name: str,
        presets: dict[str, dict[str, Any]],
        *,
        workers: int = 1,
        env: dict[str, str] | None = None,
        wrap: Wrap | None = None,
        ready_timeout_s: float = 60.0,
    ) -> Service:
        """The floor arm (`bench/floor.py`): raw aiohttp on uvloop making a fusion's five calls to the fake."""
        assert self.fake is not None
        port = free_port()
        argv = [sys.executable, "-m", "bench.floor", "--port", str(port), "--upstream", f"{self.fake.url}/v1"]
        argv += ["--presets", json.dumps(presets, separators=(",", ":")), "--workers", str(workers)]
        service = Service(name, argv, port, "/health", env=env or {}, log_dir=self.logs, cwd=REPO)
        return self._start(service, ready_timeout_s, wrap=wrap)

    def openfusion_exe(self) -> str:
        if self.openfusion_bin:
            return self.openfusion_bin
        exe = Path(sys.executable).parent / "openfusion"
        if not exe.exists():
            found = shutil.which("openfusion")
            if not found:
                raise RuntimeError("`openfusion` is not installed next to this Python: run the harness from its venv")
            return found
        return str(exe)

    def write_openfusion_config(
        self, name: str, presets: dict[str, str], *, http_extra: str = "", max_connections: int = 2048
    ) -> tuple[Path, Path]:
        """A config pointing every `fake/*` model (and the `NATIVE_PROVIDERS`' models) at the fake upstream, and a
        presets directory."""
        assert self.fake is not None
        base = self.run_dir / name
        preset_dir = base / "presets"
        if preset_dir.exists():
            shutil.rmtree(preset_dir)
        preset_dir.mkdir(parents=True)
        for preset, text in presets.items():
            (preset_dir / f"{preset}.toml").write_text(textwrap.dedent(text).strip() + "\n", encoding="utf-8")
        config = base / "config.toml"
        default = next(iter(presets))
        natives = "".join(
            f'\n[[providers]]\nname = "{name}"\nbase_url = "{self.fake.url}/v1"\nmodels = ["{name}/*"]\n{flag} = true\n'
            for name, flag in NATIVE_PROVIDERS.items()
        )
        config.write_text(
            textwrap.dedent(
                f"""\
                default_preset = "{default}"
                builtin_providers = false

                [[providers]]
                name = "fake"
                base_url = "{self.fake.url}/v1"
                models = ["fake/*"]

                [activity]
                path = "{base / "activity.sqlite3"}"

                [http]
                transport = "aiohttp"
                max_connections = {max_connections}
                """
            )
            + natives
            + textwrap.dedent(http_extra),
            encoding="utf-8",
        )
        return config, preset_dir

    def start_openfusion(
        self,
        name: str,
        presets: dict[str, str],
        *,
        http_extra: str = "",
        access_log: bool = False,
        max_connections: int = 2048,
        workers: int | None = None,
        env: dict[str, str] | None = None,
        wrap: Wrap | None = None,
        ready_timeout_s: float = 30.0,
        keyed: bool = False,
    ) -> Service:
        """openfusion serving `presets` from the fake; `keyed`: with one client key (`CLIENT_KEY`), a gateway."""
        if keyed:
            http_extra += f'\n[[keys]]\nname = "bench"\nkey_env = "{_KEY_ENV}"\n'
            env = {**(env or {}), _KEY_ENV: CLIENT_KEY, "REDIS_URL": ""}  # one server: its key counters in process
        config, preset_dir = self.write_openfusion_config(
            name, presets, http_extra=http_extra, max_connections=max_connections
        )
        port = free_port()
        argv = [
            self.openfusion_exe(),
            "serve",
            "--config",
            str(config),
            "--presets",
            str(preset_dir),
            "--port",
            str(port),
        ]
        argv += [] if access_log else ["--no-access-log", "--log-level", "warning"]
        argv += ["--workers", str(workers)] if workers else []
        own = {k: "" for k in os.environ if k.endswith("_API_KEY")}  # no provider keys from the shell
        service = Service(name, argv, port, "/healthz", env=own | (env or {}), log_dir=self.logs)
        return self._start(service, ready_timeout_s, wrap=wrap)

    def start_litellm(self, models: Sequence[str]) -> Service:
        assert self.fake is not None
        peer = envs.LITELLM
        cfg = self.run_dir / "litellm.yaml"
        entries = "".join(
            f"  - model_name: {m}\n    litellm_params:\n      model: openai/{m}\n"
            f"      api_base: {self.fake.url}/v1\n      api_key: x\n"
            for m in models
        )
        cfg.write_text(f"model_list:\n{entries}", encoding="utf-8")
        port = free_port()
        argv = [str(peer.executable), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--num_workers", "1"]
        env = {
            "LITELLM_MASTER_KEY": MASTER_KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network: do not fetch the cost map
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
        }
        return self._start(Service("litellm", argv, port, "/health/liveliness", env=env, log_dir=self.logs), 120)

    def start_optillm(self) -> Service:
        assert self.fake is not None
        peer = envs.OPTILLM
        port = free_port()
        argv = [str(peer.executable), "--base-url", f"{self.fake.url}/v1", "--host", "127.0.0.1", "--port", str(port)]
        env = {"OPENAI_API_KEY": "x", "OPTILLM_API_KEY": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        return self._start(Service("optillm", argv, port, "/health", env=env, log_dir=self.logs, cwd=self.run_dir), 180)

    # -- load ----------------------------------------------------------------------------------

    def session(self, timeout_s: float = 120.0) -> aiohttp.ClientSession:
        from bench.load import new_session

        session = new_session(timeout_s)
        self._sessions.append(session)
        return session

    async def close_sessions(self) -> None:
        for session in self._sessions:
            await session.close()
        self._sessions.clear()

    def fake_calls(self) -> dict[str, int]:
        if self.fake is None:
            return {}
        with urllib.request.urlopen(self.fake.url + "/stats", timeout=5) as response:
            return dict(json.loads(response.read())["kinds"])

    def _cpu(self) -> dict[str, dict[str, float]]:
        return {name: service.cpu() for name, service in self.services.items()}

    async def measure(
        self,
        session: aiohttp.ClientSession,
        request: RequestFn,
        *,
        concurrency: int,
        duration_s: float,
        max_requests: int,
        warmup_s: float = 0.0,
        min_samples: int = 0,
        watch: Sequence[str] = (),
        steady: bool = False,
    ) -> Slice:
        """One slice of closed-loop load, with the CPU of every service and of the machine around it.

        `steady`: CPU, throughput and the requests it is divided by are those of the steady window only
        (from the end of the warm-up to `duration_s`), not of the whole slice with its ramp-up and drain.
        """
        marks: dict[str, tuple[dict[str, dict[str, float]], float, float]] = {}
        held: dict[str, dict[int, int]] = {}

        def mark(name: str) -> None:
            marks[name] = (self._cpu(), time.process_time(), machine_busy_seconds())
            if name == "end":
                held.update({s: connections_by_pid(self.services[s].pid, self.services[s].port) for s in watch})

        calls0 = {} if steady else self.fake_calls()  # a steady slice counts between its marks instead
        cpu0, client0, busy0 = self._cpu(), time.process_time(), machine_busy_seconds()
        result = await closed_loop(
            session,
            request,
            concurrency=concurrency,
            duration_s=duration_s,
            max_requests=max_requests,
            warmup_s=warmup_s,
            min_samples=min_samples,
            steady=mark if steady else None,
        )
        if not steady:
            return self._slice(result, calls0, cpu0, client0, busy0, watch)
        (cpu0, client0, busy0), (cpu1, client1, busy1) = marks["start"], marks["end"]
        result.elapsed, result.completed = result.steady_s, result.steady_completed
        taken = self._slice(result, {}, cpu0, client0, busy0, watch, after=(cpu1, client1, busy1, {}))
        taken.connections_by_pid = {name: split for name, split in held.items() if len(split) > 1}
        return taken

    async def measure_wave(
        self, session: aiohttp.ClientSession, request: RequestFn, *, count: int, watch: Sequence[str] = ()
    ) -> Slice:
        from bench.load import wave

        calls0, cpu0, client0, busy0 = self.fake_calls(), self._cpu(), time.process_time(), machine_busy_seconds()
        result = await wave(session, request, count=count)
        return self._slice(result, calls0, cpu0, client0, busy0, watch)

    def _slice(
        self,
        result: LoopResult,
        calls0: dict[str, int],
        cpu0: dict[str, dict[str, float]],
        client0: float,
        busy0: float,
        watch: Sequence[str],
        *,
        after: tuple[dict[str, dict[str, float]], float, float, dict[str, int]] | None = None,
    ) -> Slice:
        if after is None:
            cpu1, client1, busy1, calls1 = self._cpu(), time.process_time(), machine_busy_seconds(), self.fake_calls()
        else:
            cpu1, client1, busy1, calls1 = after
        cpu = {name: cpu_delta(cpu0.get(name, cpu1[name]), cpu1[name]) for name in cpu1}
        rss = {name: self.services[name].rss() for name in watch if name in self.services}
        by_pid = {name: _cpu_by_pid(cpu0.get(name, {}), cpu1[name]) for name in watch if name in cpu1}
        return Slice(
            samples=result.samples,
            elapsed=result.elapsed,
            completed=result.completed,
            cpu=cpu,
            watched=[name for name in cpu if name in watch or name == "fake"],
            client_cpu=client1 - client0,
            busy=busy1 - busy0,
            calls={k: calls1.get(k, 0) - calls0.get(k, 0) for k in calls1},
            rss=rss,
            loadavg=loadavg(),
            cpu_by_pid={name: split for name, split in by_pid.items() if len(split) > 1},
        )


def _cpu_by_pid(before: dict[str, float], after: dict[str, float]) -> dict[int, float]:
    """CPU seconds of each process of a tree between two `cpu_snapshot`s (processes that did any work)."""
    pids = {key.split("/", 1)[0] for key in after}
    out = {}
    for pid in pids:
        mine = {k: v for k, v in after.items() if k.split("/", 1)[0] == pid}
        spent = cpu_delta({k: v for k, v in before.items() if k.split("/", 1)[0] == pid}, mine)
        if spent > 0.001:
            out[int(pid)] = spent
    return out


async def interleaved(
    bench: Bench,
    arms: dict[str, tuple[aiohttp.ClientSession, RequestFn, Sequence[str]]],
    *,
    concurrency: int,
    rounds: int,
    slice_s: float,
    max_requests: int,
    warmup_s: float,
    prewarm: bool = True,
    min_samples: int = 0,
    steady: bool = False,
) -> dict[str, list[Slice]]:
    """Run every arm `rounds` times, rotating the order each round so drift hits all arms alike.

    Each arm first gets a short unrecorded warm-up (first requests are slow in every server: imports,
    connection set-up, caches), then its measured slices.
    """
    names = list(arms)
    slices: dict[str, list[Slice]] = {name: [] for name in names}
    for name in names if prewarm else ():
        session, request, _ = arms[name]
        await closed_loop(
            session,
            request,
            concurrency=min(concurrency, 10),
            duration_s=warmup_s,
            max_requests=50,
            max_duration_s=warmup_s + 30,
        )
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            session, request, watch = arms[name]
            slices[name].append(
                await bench.measure(
                    session,
                    request,
                    concurrency=concurrency,
                    duration_s=slice_s,
                    max_requests=max_requests,
                    warmup_s=warmup_s,
                    min_samples=min_samples,
                    watch=watch,
                    steady=steady,
                )
            )
            await asyncio.sleep(0.1)
    return slices


T = TypeVar("T")


def run_harness(main: Coroutine[Any, Any, T]) -> T:
    """Run a harness coroutine on uvloop (asyncio's own loop without it), with the open-file limit raised."""
    raise_fd_limit()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        return runner.run(main)
