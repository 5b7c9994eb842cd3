"""The floor arm: the least a fusion proxy on this stack can cost (run as its own process).

    python -m bench.floor --port 9200 --upstream http://127.0.0.1:9100/v1 \
        --presets '{"bench3": {"panel": ["fake/lat-100", ...], "judge": "fake/lat-50", "synth": "..."}}' \
        [--workers 2]

Raw aiohttp server and client on uvloop, no framework, no validation, no retries, no records: a
request for `fusion/<preset>` makes the same five upstream calls a fusion makes — the three
panelists at once, then the judge (asking for a JSON analysis), then the synthesizer, whose answer
(streamed or not, as the client asked) is relayed byte for byte. Any other model is passed through:
the request body forwarded as is, the answer relayed. What openfusion spends beyond this arm is
what its validation, orchestration, records and framework cost.

`--workers N` forks N processes before any event loop exists, each listening on the port with
SO_REUSEPORT (the kernel spreads connections), so the arm can be compared with `openfusion serve
--workers N` too. `GET /health` answers ok.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from typing import Any

import aiohttp
import orjson
from aiohttp import web

JUDGE_FORMAT = {"type": "json_schema", "json_schema": {"name": "fusion_analysis", "strict": True, "schema": {}}}
JSON = {"Content-Type": "application/json"}


class Floor:
    def __init__(self, upstream: str, presets: dict[str, dict[str, Any]]) -> None:
        self.url = upstream.rstrip("/") + "/chat/completions"
        self.presets = presets
        self.session: aiohttp.ClientSession | None = None

    async def start(self, _app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))

    async def stop(self, _app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    async def content(self, body: dict[str, Any]) -> str:
        assert self.session is not None
        async with self.session.post(self.url, data=orjson.dumps(body), headers=JSON) as response:
            answer = orjson.loads(await response.read())
        return str(answer["choices"][0]["message"]["content"])

    async def chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        req = orjson.loads(raw)
        model = str(req.get("model", ""))
        stream = bool(req.get("stream"))
        preset = self.presets.get(model.removeprefix("fusion/")) if model.startswith("fusion/") else None
        if preset is None:
            return await self.relay(request, raw, stream=stream)
        messages = req["messages"]
        answers = await asyncio.gather(*(self.content({"model": m, "messages": messages}) for m in preset["panel"]))
        question = str(messages[-1].get("content", ""))
        prompt = question + "".join(
            f"\n\n<answer model={m}>\n{a}\n</answer>" for m, a in zip(preset["panel"], answers, strict=True)
        )
        analysis = orjson.loads(
            await self.content(
                {
                    "model": preset["judge"],
                    "messages": [{"role": "system", "content": "Analyse."}, {"role": "user", "content": prompt}],
                    "response_format": JUDGE_FORMAT,
                }
            )
        )
        synth: dict[str, Any] = {
            "model": preset["synth"],
            "messages": [
                {"role": "system", "content": "Answer, using:\n" + orjson.dumps(analysis).decode() + prompt},
                *messages,
            ],
            "stream": stream,
        }
        if stream:
            synth["stream_options"] = {"include_usage": True}
        return await self.relay(request, orjson.dumps(synth), stream=stream)

    async def relay(self, request: web.Request, body: bytes, *, stream: bool) -> web.StreamResponse:
        assert self.session is not None
        async with self.session.post(self.url, data=body, headers=JSON) as upstream:
            if not stream:
                return web.Response(body=await upstream.read(), status=upstream.status, content_type="application/json")
            out = web.StreamResponse(status=upstream.status, headers={"Content-Type": "text/event-stream"})
            await out.prepare(request)
            async for block in upstream.content.iter_any():
                await out.write(block)
            await out.write_eof()
            return out


async def health(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def serve(port: int, floor: Floor) -> None:
    app = web.Application(client_max_size=64 * 2**20)
    app.on_startup.append(floor.start)
    app.on_cleanup.append(floor.stop)
    app.router.add_post("/v1/chat/completions", floor.chat)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True, backlog=4096).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream's base URL, ending in /v1")
    parser.add_argument("--presets", default="{}", help="JSON: {name: {panel: [3 models], judge, synth}}")
    parser.add_argument("--workers", type=int, default=1, help="processes listening on the port (SO_REUSEPORT)")
    args = parser.parse_args()
    floor = Floor(args.upstream, orjson.loads(args.presets))
    children = []
    for _ in range(args.workers - 1):  # before any event loop exists: each process builds its own
        pid = os.fork()
        if pid == 0:
            children = []
            break
        children.append(pid)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.port, floor))
    for pid in children:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
