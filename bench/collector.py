"""A local OTLP/HTTP trace sink for benchmarks (run as its own process): accepts and counts, keeps nothing.

    python -m bench.collector --port 4318

`POST /v1/traces` answers 200 with an empty export response after reading the body; `GET /stats`
returns how many exports and bytes arrived; `GET /health` answers ok. It stands in for a collector on
the same host, so what a traced arm pays is its own span work and export, not a remote network.
"""

from __future__ import annotations

import argparse

import orjson
from aiohttp import web

_stats = {"exports": 0, "bytes": 0}


async def traces(request: web.Request) -> web.Response:
    body = await request.read()
    _stats["exports"] += 1
    _stats["bytes"] += len(body)
    return web.Response(body=b"", content_type="application/x-protobuf")


async def stats(_: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(_stats), content_type="application/json")


async def health(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/stats", stats)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
