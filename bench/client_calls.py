"""Client CPU per upstream call: openfusion's upstream client, on its transport and httpx-aiohttp's; bare aiohttp.

    python -m bench.client_calls [--calls 2000] [--rounds 5] [--concurrency 20]

Starts the fake upstream (`bench.fakeup`, its own process), then in this process (uvloop) makes
batches of concurrent calls — non-streamed (`complete`, a judge-sized answer) and streamed (8 and
408 tokens, read to the end; their difference is the price of a token) — through `UpstreamClient`
on each transport, and the same requests through a bare `aiohttp.ClientSession` (read and parse
the body; read the stream's blocks). The arms alternate round by round; each figure is the least
CPU time of this process per call over the rounds (`time.process_time`; the fake's CPU is its
own). Prints a table, with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import orjson
import uvloop

from bench.procs import free_port
from bench.scenarios import say
from openfusion.settings import HttpSettings, ProviderConfig, RetrySettings, Settings
from openfusion.upstream.client import UpstreamClient, build_http_client
from openfusion.upstream.providers import ProviderRegistry

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
Call = Callable[[], Awaitable[object]]


def _registry(base_url: str) -> ProviderRegistry:
    provider = ProviderConfig(name="fake", base_url=base_url, api_key_env="FAKE_KEY", models=["fake/*"])
    settings = Settings(providers=[provider], builtin_providers=False)
    return ProviderRegistry.from_settings(settings, {"FAKE_KEY": "sk-bench-0123456789abcdef"})


def _upstream_calls(client: UpstreamClient) -> dict[str, Call]:
    async def complete() -> object:
        return await client.complete("fake/lat-0-tok-40", {"messages": MESSAGES})

    def stream(tokens: int) -> Call:
        async def call() -> object:
            async with client.stream(f"fake/lat-0-tok-{tokens}", {"messages": MESSAGES}) as chunks:
                return [chunk async for chunk in chunks]

        return call

    return {"complete": complete, "stream 8": stream(8), "stream 408": stream(408)}


def _aiohttp_calls(session: aiohttp.ClientSession, url: str) -> dict[str, Call]:
    headers = {"Authorization": "Bearer sk-bench-0123456789abcdef", "Content-Type": "application/json"}

    async def complete() -> object:
        body = orjson.dumps({"model": "lat-0-tok-40", "messages": MESSAGES, "stream": False})
        async with session.post(url, data=body, headers=headers) as response:
            return orjson.loads(await response.read())

    def stream(tokens: int) -> Call:
        async def call() -> object:
            body = orjson.dumps({"model": f"lat-0-tok-{tokens}", "messages": MESSAGES, "stream": True})
            async with session.post(url, data=body, headers=headers) as response:
                return [block async for block in response.content.iter_any()]

        return call

    return {"complete": complete, "stream 8": stream(8), "stream 408": stream(408)}


async def _cpu_per_call(call: Call, *, calls: int, concurrency: int) -> float:
    """Seconds of this process's CPU per call, over `calls` calls made `concurrency` at a time."""
    await asyncio.gather(*(call() for _ in range(concurrency)))  # warm: connections open
    start = time.process_time()
    for _ in range(calls // concurrency):
        await asyncio.gather(*(call() for _ in range(concurrency)))
    return (time.process_time() - start) / (calls // concurrency * concurrency)


async def measure(base_url: str, *, calls: int, rounds: int, concurrency: int) -> dict[tuple[str, str], float]:
    registry = _registry(base_url)
    retry = RetrySettings()
    own = build_http_client(HttpSettings(transport="aiohttp", max_connections=512))
    arms: dict[str, dict[str, Call]] = {
        "openfusion on its aiohttp transport": _upstream_calls(UpstreamClient(own, registry, retry)),
    }
    closing: list[httpx.AsyncClient] = [own]
    try:
        from httpx_aiohttp import HttpxAiohttpClient

        timeout, limits = own.timeout, httpx.Limits(max_connections=512, max_keepalive_connections=512)
        legacy = HttpxAiohttpClient(timeout=timeout, limits=limits, trust_env=False)
        closing.append(legacy)
        arms["openfusion on httpx-aiohttp's transport"] = _upstream_calls(UpstreamClient(legacy, registry, retry))
    except ImportError:
        pass
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512))
    arms["bare aiohttp (reference)"] = _aiohttp_calls(session, base_url + "/chat/completions")
    best: dict[tuple[str, str], float] = {}
    try:
        for round_number in range(rounds):
            names = list(arms)
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                for kind, call in arms[name].items():
                    seconds = await _cpu_per_call(call, calls=calls, concurrency=concurrency)
                    best[name, kind] = min(seconds, best.get((name, kind), seconds))
    finally:
        await session.close()
        for client in closing:
            await client.aclose()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    port = free_port()
    fake = subprocess.Popen([sys.executable, "-m", "bench.fakeup", "--port", str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or fake.poll() is not None:
                    raise SystemExit("the fake upstream did not start") from None
                time.sleep(0.1)
        load_before = os.getloadavg()
        best = uvloop.run(
            measure(f"http://127.0.0.1:{port}/v1", calls=args.calls, rounds=args.rounds, concurrency=args.concurrency)
        )
        load_after = os.getloadavg()
    finally:
        fake.terminate()
        fake.wait(timeout=10)
    say(f"client CPU per call, least of {args.rounds} rounds of {args.calls} calls, {args.concurrency} at a time")
    say(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} ({os.cpu_count()} cores)\n")
    say("| arm | complete (µs) | stream, 8 tokens (µs) | stream, 408 tokens (µs) | per token (µs) |")
    say("|---|---|---|---|---|")
    for name in dict.fromkeys(name for name, _ in best):
        complete, short, long = (best[name, kind] * 1e6 for kind in ("complete", "stream 8", "stream 408"))
        say(f"| {name} | {complete:.0f} | {short:.0f} | {long:.0f} | {(long - short) / 400:.2f} |")


if __name__ == "__main__":
    main()
