"""The load generator: closed-loop workers at a fixed concurrency, bounded in time and count.

aiohttp client (C parser, cheap per request, so the generator is not what saturates the two
cores). Each request records wall time, time to response headers, to the first non-empty body
line (for fusion streams: the first `: OPENFUSION PROCESSING` keep-alive) and to the first `data:`
line, plus the gaps between `data:` lines (to see whether tokens are relayed or batched).
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


@dataclass
class Sample:
    """One request's outcome and timings (seconds, from the moment it was sent)."""

    started: float
    wall: float
    ok: bool
    status: int = 0
    headers: float | None = None  # response headers received
    first_line: float | None = None  # first non-empty body line (a keep-alive comment counts)
    first_progress: float | None = None  # first `data:` chunk carrying `delta.reasoning` (fusion progress)
    first_data: float | None = None  # first `data:` chunk with answer content (the first token)
    data_lines: int = 0  # `data:` chunks with answer content
    progress_lines: int = 0
    keepalives: int = 0
    gaps: list[float] = field(default_factory=list)  # between consecutive content chunks
    error: str | None = None


def _check_loopback(url: str) -> None:
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    if host not in LOOPBACK:
        raise ValueError(f"benchmarks send traffic to loopback only, not {url}")


def new_session(timeout_s: float = 120.0) -> aiohttp.ClientSession:
    """A client session with no connection cap (concurrency is set by the workers)."""
    # Idle connections are dropped after 3 s, before uvicorn drops them (5 s): a request must never race
    # a server closing the idle connection it reuses.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, force_close=False, keepalive_timeout=3)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        skip_auto_headers=("User-Agent",),
    )


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    stream: bool,
    headers: dict[str, str] | None = None,
    keep_gaps: bool = False,
    dialect: str = "chat",
) -> Sample:
    """POST a chat completion (or, with dialect="responses" or "messages", a Responses API or an Anthropic
    Messages request) and time it.

    Streams are read line by line.
    """
    marks = _MARKS[dialect]
    _check_loopback(url)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    t0 = time.perf_counter()
    sample = Sample(started=t0, wall=0.0, ok=False)
    try:
        async with session.post(url, data=body, headers=hdrs) as response:
            sample.headers = time.perf_counter() - t0
            sample.status = response.status
            if not stream or response.status >= 400:
                payload = await response.read()
                if response.status >= 400:
                    sample.error = f"HTTP {response.status}: {payload[:200]!r}"
                elif marks.whole not in payload:
                    sample.error = f"no {marks.whole.decode()} in {payload[:200]!r}"
                else:
                    sample.ok = True
            else:
                last_data = None
                done = False
                async for line in response.content:
                    if not line.strip():
                        continue
                    now = time.perf_counter() - t0
                    if sample.first_line is None:
                        sample.first_line = now
                    if line.startswith(b":"):
                        sample.keepalives += 1
                        continue
                    if line.startswith(b"data:"):
                        if marks.done in line:
                            done = True
                            continue
                        if marks.error in line:
                            sample.error = line[:300].decode(errors="replace")
                        if marks.progress in line:
                            sample.progress_lines += 1
                            if sample.first_progress is None:
                                sample.first_progress = now
                        if marks.content in line and marks.empty not in line:
                            if sample.first_data is None:
                                sample.first_data = now
                            if keep_gaps and last_data is not None:
                                sample.gaps.append(now - last_data)
                            last_data = now
                            sample.data_lines += 1
                sample.ok = done and sample.error is None
                if not done and sample.error is None:
                    sample.error = f"stream ended without {marks.done.decode()}"
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"[:200]
    sample.wall = time.perf_counter() - t0
    return sample


@dataclass(frozen=True)
class _Marks:
    """How a stream of one API surface shows its end, an error, progress and answer text."""

    whole: bytes  # in a successful non-streamed body
    done: bytes
    error: bytes
    progress: bytes
    content: bytes
    empty: bytes


_MARKS = {
    "chat": _Marks(b'"choices"', b"[DONE]", b'"finish_reason":"error"', b'"reasoning":"', b'"content":"',
                   b'"content":""'),
    "responses": _Marks(b'"output"', b'"type":"response.completed"', b'"type":"response.failed"',
                        b'"type":"response.fusion_call.', b'"type":"response.output_text.delta"', b'"delta":""'),
    # Messages streams report no fusion progress (pings only): its progress mark never matches.
    "messages": _Marks(b'"type":"message"', b'"type":"message_stop"', b'"type":"error"', b"\x00",
                       b'"type":"text_delta"', b'"text":""'),
}  # fmt: skip


RequestFn = Callable[[aiohttp.ClientSession], Awaitable[Sample]]


@dataclass
class LoopResult:
    samples: list[Sample]
    elapsed: float  # from first start to last completion
    completed: int  # requests finished in the window, warm-up ones included (for CPU accounting)
    # With `steady`: the requests finished between the end of the warm-up and `duration_s`, and that span.
    steady_completed: int = 0
    steady_s: float = 0.0


async def closed_loop(
    session: aiohttp.ClientSession,
    request: RequestFn,
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    warmup_s: float = 0.0,
    min_samples: int = 0,
    max_duration_s: float | None = None,
    steady: Callable[[str], None] | None = None,
) -> LoopResult:
    """`concurrency` workers each send a request, wait for it, send the next, until time or count runs out.

    Requests started during the first `warmup_s` are not kept as samples (connections are being made).
    A slow arm keeps going past `duration_s` until it has `min_samples`, but never past
    `max_duration_s`. Nothing is cancelled: in-flight requests finish, so the window's CPU covers
    whole requests.

    `steady`, if given, is called with "start" once the warm-up is over and with "end" at `duration_s`
    (e.g. to read every process's CPU then); the result counts the requests finished in between: a
    steady state at full concurrency, without the ramp-up (every connection opening, the first
    synchronised wave) nor the drain (fewer and fewer requests in flight once time is up).
    """
    started = time.perf_counter()
    stop_at = started + duration_s
    hard_stop = started + (max_duration_s if max_duration_s is not None else 4 * duration_s + 20)
    warm_until = started + warmup_s
    issued = 0
    samples: list[Sample] = []
    completed = 0
    window = [math.inf, math.inf]  # when `steady` was called with "start" and with "end"
    finished: list[float] = []  # completion times, for the steady window

    async def worker() -> None:
        nonlocal issued, completed
        while issued < max_requests:
            now = time.perf_counter()
            if now >= hard_stop or (now >= stop_at and len(samples) >= min_samples):
                break
            issued += 1
            sample = await request(session)
            completed += 1
            if steady is not None:
                finished.append(time.perf_counter())
            if sample.started >= warm_until:
                samples.append(sample)

    async def marks(callback: Callable[[str], None]) -> None:
        for i, (at, mark) in enumerate(((warm_until, "start"), (stop_at, "end"))):
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            callback(mark)
            window[i] = time.perf_counter()

    await asyncio.gather(*(worker() for _ in range(concurrency)), *([marks(steady)] if steady else []))
    result = LoopResult(samples, time.perf_counter() - started, completed)
    if steady is not None and window[1] < math.inf:
        result.steady_completed = sum(1 for t in finished if window[0] <= t < window[1])
        result.steady_s = window[1] - window[0]
    return result


async def wave(session: aiohttp.ClientSession, request: RequestFn, *, count: int) -> LoopResult:
    """`count` requests sent at once (open load), each once."""
    started = time.perf_counter()
    samples = list(await asyncio.gather(*(request(session) for _ in range(count))))
    return LoopResult(samples, time.perf_counter() - started, count)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(samples: Sequence[Sample], *, elapsed: float, completed: int, base_s: float = 0.0) -> dict[str, Any]:
    """p50/p95/p99 (ms) of wall time and of stream milestones, throughput, errors."""
    ok = [s for s in samples if s.ok]
    out: dict[str, Any] = {
        "n": len(samples),
        "errors": len(samples) - len(ok),
        # Every request finished in the window (warm-up ones too) over the window's length.
        "rps": completed / elapsed if elapsed > 0 else math.nan,
    }
    errors = [s.error for s in samples if not s.ok and s.error]
    if errors:
        out["error_example"] = errors[0]
    for name, values in (
        ("wall", [s.wall for s in ok]),
        ("headers", [s.headers for s in ok if s.headers is not None]),
        ("first_line", [s.first_line for s in ok if s.first_line is not None]),
        ("first_progress", [s.first_progress for s in ok if s.first_progress is not None]),
        ("first_data", [s.first_data for s in ok if s.first_data is not None]),
    ):
        if values:
            out[name] = {f"p{q}": percentile(values, q) * 1000 for q in (50, 95, 99)}
    if base_s and ok:
        over = [(s.wall - base_s) * 1000 for s in ok]
        out["overhead"] = {f"p{q}": percentile(over, q) for q in (50, 95, 99)}
    gaps = [g for s in ok for g in s.gaps]
    if gaps:
        out["gap_ms"] = {"p50": statistics.median(gaps) * 1000, "min": min(gaps) * 1000}
        out["data_lines"] = statistics.median([s.data_lines for s in ok])
    if any(s.progress_lines for s in ok):
        out["progress_lines"] = statistics.median([s.progress_lines for s in ok])
    if any(s.keepalives for s in ok):
        out["keepalives"] = statistics.median([s.keepalives for s in ok])
    return out


def responses_body(model: str, *, stream: bool, content: str = "Is nuclear power safer than wind?") -> bytes:
    """The same question as a Responses API request."""
    return orjson.dumps({"model": model, "input": content, "stream": stream, "store": False})


def messages_body(model: str, *, stream: bool, content: str = "Is nuclear power safer than wind?") -> bytes:
    """The same question as an Anthropic Messages request."""
    return orjson.dumps(
        {"model": model, "max_tokens": 1024, "messages": [{"role": "user", "content": content}], "stream": stream}
    )


def chat_body(model: str, *, stream: bool, content: str = "Is nuclear power safer than wind?", **extra: Any) -> bytes:
    """The request body every arm gets (same bytes to every proxy)."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}
    body.update(extra)
    return orjson.dumps(body)


def agent_body(model: str, *, stream: bool, steps: int = 60) -> bytes:
    """A coding agent's request late in its loop (~150 KB): a system prompt, `steps` rounds of a user turn, an
    assistant tool call and its result, then a new question (so that no agent-loop turn is reused)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a coding agent. " * 40}]
    for i in range(steps):
        arguments = orjson.dumps({"path": f"src/module_{i}.py"}).decode()
        messages += [
            {"role": "user", "content": f"Step {i}: " + "please look at the failing test and fix it. " * 18},
            {
                "role": "assistant",
                "content": "I will read the file first. " * 30,
                "tool_calls": [
                    {"id": f"call_{i}", "type": "function", "function": {"name": "read_file", "arguments": arguments}}
                ],
            },
            {"role": "tool", "tool_call_id": f"call_{i}", "content": "def f(x):\n    return x + 1\n" * 22},
        ]
    messages.append({"role": "user", "content": "Now summarise what changed and why."})
    return orjson.dumps({"model": model, "messages": messages, "stream": stream})


# Each API surface's path and request body (the same question on each): chat completions, the Responses API, Messages.
SURFACES: dict[str, tuple[str, Callable[..., bytes]]] = {
    "chat": ("/v1/chat/completions", chat_body),
    "responses": ("/v1/responses", responses_body),
    "messages": ("/v1/messages", messages_body),
}
