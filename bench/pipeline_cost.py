"""The pipeline's own cost per fusion, in process: parse, plan, run_fusion, render as SSE; no server, no sockets.

    python -m bench.pipeline_cost 400                    # CPU µs per fusion (noisy on a shared machine)
    valgrind --tool=callgrind python -m bench.pipeline_cost 100   # instructions: run with 100 and 400,
    valgrind --tool=callgrind python -m bench.pipeline_cost 400   # (Ir(400) - Ir(100)) / 300 per fusion

The upstream is an `httpx.MockTransport` answering from prebuilt bytes (three panelists, a judge with a
valid analysis, an 8-token streamed synthesizer), so the count is openfusion's work plus httpx's models
and this fake's: a fixed part that cancels out when two builds are compared. Instruction counts do not
move with the machine's load, which makes this the tool for a before/after of a small pipeline change.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import orjson

from openfusion.api.fusion_response import complete_fusion, stream_fusion
from openfusion.pipeline.plan import plan_fusion
from openfusion.pipeline.run import run_fusion
from openfusion.pipeline.structured import DialectMemory
from openfusion.presets import Preset
from openfusion.protocol import ChatRequest
from openfusion.settings import ProviderConfig, Settings
from openfusion.upstream.client import UpstreamClient
from openfusion.upstream.providers import ProviderRegistry
from openfusion.upstream.trace import start_trace
from openfusion.workers.serve import settle_heap

USAGE = {"prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50}
ANALYSIS = {
    "consensus": ["a", "b"],
    "contradictions": [{"topic": "t", "stances": [{"model": "fake/lat-0", "stance": "x"}]}],
    "partial_coverage": [{"models": ["fake/lat-0"], "point": "p"}],
    "unique_insights": [{"model": "fake/lat-0", "insight": "i"}],
    "blind_spots": ["z"],
}


def _completion(content: str) -> bytes:
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    return orjson.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [choice]})


def _event(choices: list[object], **extra: object) -> bytes:
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices, **extra}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


PANEL = _completion("Nuclear power has a very low death rate per TWh. " * 12)
JUDGE = _completion(orjson.dumps(ANALYSIS).decode())
SYNTH = [
    *(_event([{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}]) for i in range(8)),
    _event([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
    _event([], usage=USAGE),
    b"data: [DONE]\n\n",
]


class _Parts(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in SYNTH:
            yield part


def _answer(request: httpx.Request) -> httpx.Response:
    body = orjson.loads(request.content)
    if body.get("stream"):
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_Parts())
    content = JUDGE if "response_format" in body else PANEL
    return httpx.Response(200, headers={"content-type": "application/json"}, content=content)


async def measure(requests: int, *, concurrency: int, stream: bool) -> float:
    """CPU seconds per fusion over `requests` fusions, `concurrency` at a time (after a warm-up)."""
    provider = ProviderConfig(name="fake", base_url="http://fake.test/v1", models=["fake/*"], strip_prefix=True)
    settings = Settings(providers=[provider], builtin_providers=False)
    registry = ProviderRegistry.from_settings(settings, {})
    upstream = UpstreamClient(httpx.AsyncClient(transport=httpx.MockTransport(_answer)), registry, settings.retry)
    preset = Preset(name="fast0", analysis_models=["fake/lat-0"] * 3, model="fake/lat-0", synthesis_model="fake/s")
    dialects = DialectMemory()
    message = {"role": "user", "content": "Is nuclear power safer than wind?"}
    raw = orjson.dumps({"model": "fusion/fast0", "messages": [message], "stream": stream})

    async def one() -> None:
        start_trace()
        chat = ChatRequest.model_validate_json(raw)
        plan = plan_fusion(chat, presets={"fast0": preset}, default_preset="fast0", registry=registry)
        assert plan is not None
        events = run_fusion(upstream=upstream, plan=plan, request=chat, stream=stream, dialects=dialects)
        if stream:
            async for _ in stream_fusion(events, generation_id="gen-1", model=chat.model):
                pass
        else:
            await complete_fusion(events, generation_id="gen-1")

    async def worker(count: int) -> None:
        for _ in range(count):
            await asyncio.create_task(one())  # its own context, as a server's request has

    await worker(20)
    settle_heap()  # as `openfusion serve` does once started
    started = time.process_time()
    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    return (time.process_time() - started) / (requests // concurrency * concurrency)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("requests", type=int, nargs="?", default=400)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--no-stream", action="store_true")
    args = parser.parse_args()
    cpu = asyncio.run(measure(args.requests, concurrency=args.concurrency, stream=not args.no_stream))
    print(f"{cpu * 1e6:.0f} µs of CPU per fusion ({args.requests} fusions, c={args.concurrency})")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
