"""What a held SSE stream costs in a plain uvicorn server, response class by response class.

    python -m bench.response_memory [--response openfusion|starlette|raw] [--streams 1000] [--trace]

The memory scenario's RSS per held fusion stream (~100 KiB) is mostly the run, the connections and the ramp's peak;
this isolates the streaming response: uvicorn (httptools, uvloop) serves an app that answers one SSE chunk and waits,
a client in another process holds `--streams` of them, and the server's RSS is read before and with them held.
`raw` sends the start and the chunk itself and never listens for the client (the floor); `starlette` is Starlette's
`StreamingResponse`; `openfusion` the SSE routes' `EventStreamResponse` (keep-alives on, as a fusion stream has them),
from whichever openfusion this Python imports: run it with each build's interpreter to compare builds. `--trace`:
the Python heap per held stream instead (tracemalloc), by allocating line. (OPTIMISATIONS.md, 40.)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import socket
import sys
import tracemalloc
from typing import Any

from bench.scenarios import say

CLIENT = """
import asyncio, sys
async def main(port, n):
    request = b"POST / HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 2\\r\\n\\r\\n{}"
    held, gate = [], asyncio.Semaphore(100)
    async def one():
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            data = b""
            while b"data:" not in data:
                data += await reader.read(4096)
            held.append(writer)
    await asyncio.gather(*(one() for _ in range(n)))
    print("held", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


def _rss() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))


def _app(kind: str, release: asyncio.Event) -> Any:
    async def body() -> Any:
        yield b'data: {"x":1}\n\n'
        await release.wait()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if kind == "raw":
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            )
            async for chunk in body():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if kind == "starlette":
            from starlette.responses import StreamingResponse

            await StreamingResponse(body(), media_type="text/event-stream")(scope, receive, send)
            return
        from openfusion.api.event_stream import EventStreamResponse
        from openfusion.sse import KEEPALIVE

        response = EventStreamResponse(
            body(), media_type="text/event-stream", headers_with_first_chunk=True, keepalive=KEEPALIVE,
            keepalive_interval=2.0,
        )  # fmt: skip
        await response(scope, receive, send)

    return app


async def _hold(port: int, n: int) -> asyncio.subprocess.Process:
    """A client in another process holding `n` streams (its own memory is not the server's)."""
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(port), str(n), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert client.stdout is not None
    line = await client.stdout.readline()
    assert line.strip() == b"held", line
    return client


async def _let_go(client: asyncio.subprocess.Process) -> None:
    assert client.stdin is not None
    client.stdin.close()
    await asyncio.wait_for(client.wait(), 30)


async def run(args: argparse.Namespace) -> None:
    import uvicorn

    release = asyncio.Event()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        _app(args.response, release), http="httptools", loop="none", lifespan="off", log_level="critical"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 (uvicorn tells it by a flag only)
        await asyncio.sleep(0.05)
    await _let_go(await _hold(port, 20))  # warm: every code path run once
    await asyncio.sleep(0.5)
    gc.collect()
    if args.trace:
        tracemalloc.start(1)
    before = tracemalloc.take_snapshot() if args.trace else None
    rss = _rss()
    client = await _hold(port, args.streams)
    await asyncio.sleep(0.5)
    gc.collect()
    rss_held = _rss()
    n = args.streams
    say(f"{args.response}: {n} streams held, RSS {(rss_held - rss) / n / 1024:.2f} KiB per stream")
    if before is not None:
        rows = tracemalloc.take_snapshot().compare_to(before, "lineno")
        say(f"Python heap {sum(row.size_diff for row in rows) / n / 1024:.2f} KiB per stream; by line (bytes):")
        for row in rows[: args.top]:
            frame = row.traceback[0]
            say(f"  {row.size_diff / n:7.0f} {row.count_diff / n:5.1f}  {frame.filename}:{frame.lineno}")
    release.set()
    await _let_go(client)
    server.should_exit = True
    await serving


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--response", choices=("openfusion", "starlette", "raw"), default="openfusion")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--trace", action="store_true", help="the Python heap by line too (tracemalloc)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    import uvloop

    uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
