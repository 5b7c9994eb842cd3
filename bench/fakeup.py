"""A fast fake OpenAI-compatible upstream for benchmarks (run as its own process).

    python -m bench.fakeup --port 9100 [--models '{"judge": {"latency_ms": 50}}']

Every behaviour is chosen by the requested model name, so the critical path of a request is known
exactly. The name's last path segment is read as `-`-separated key/value pairs:

    lat-<ms>     wait before answering (non-stream: the whole body; stream: headers + first token)
    tok-<n>      content chunks (tokens) in the answer                          (default 8)
    every-<ms>   gap between two streamed tokens; a non-stream answer waits the same total
    size-<n>     content bytes of the whole answer                              (default 6 per token)
    hang         never answer (sleeps up to --hang-cap-s)

so `fake/lat-50-tok-20-every-5` answers a stream after 50 ms and then one token every 5 ms: its
duration is lat + (tok - 1) * every, streamed or not. A JSON mapping (`--models`) can name
profiles explicitly ({"name": {"latency_ms", "tokens", "every_ms", "size", "hang"}}).

`POST /v1/responses` and `POST /v1/messages` answer the same way in the Responses API's and Anthropic Messages' wire
formats (`bench/fakewire.py`), for providers configured as speaking them: openfusion relays those natively.

A request carrying `response_format: {"type": "json_schema"}` is a judge call: it gets a valid
five-key fusion analysis as its content. `n` > 1 (OptiLLM's moa) returns n choices. Usage is
always reported (streams: a final usage chunk when `stream_options.include_usage` is set).
Bodies are built once per (model, shape) and cached, so a request costs one JSON parse, one
timer and one write. `GET /stats` returns call counts per model and per kind ("judge", "stream", "complete"; on the
other surfaces "responses stream", "messages complete"...); `GET /health` answers ok.
`POST /trace` starts keeping every call's arrival, first byte and end (seconds on the machine's
monotonic clock, `time.monotonic()` in any process); `GET /trace` returns them and stops: where a
proxy's time goes between one upstream call and the next.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from bench import fakewire

_KEYS = {"lat": "latency_ms", "tok": "tokens", "every": "every_ms", "size": "size"}
_NUM = re.compile(r"^\d+(\.\d+)?$")
_WORDS = ("alpha ", "beta ", "gamma ", "delta ", "eps ", "zeta ", "eta ", "theta ")
USAGE = {"prompt_tokens": 40, "completion_tokens": 8, "total_tokens": 48}


@dataclass(frozen=True)
class Profile:
    """How the fake answers one model."""

    latency_ms: float = 0.0
    tokens: int = 8
    every_ms: float = 0.0
    size: int | None = None
    hang: bool = False

    @property
    def duration_s(self) -> float:
        """Time from request to last byte (the model's share of a critical path)."""
        return (self.latency_ms + max(0, self.tokens - 1) * self.every_ms) / 1000


def parse_profile(model: str) -> Profile:
    """The profile named by a model slug such as `fake/lat-50-tok-20-every-5`."""
    parts = model.rsplit("/", 1)[-1].split("-")
    values: dict[str, Any] = {}
    i = 0
    while i < len(parts):
        key = parts[i]
        if key == "hang":
            values["hang"] = True
        elif key in _KEYS and i + 1 < len(parts) and _NUM.match(parts[i + 1]):
            raw = parts[i + 1]
            values[_KEYS[key]] = float(raw) if key in ("lat", "every") else int(float(raw))
            i += 1
        i += 1
    return Profile(**values)


def analysis_json(models: list[str]) -> str:
    """A valid fusion analysis (all five keys, every nested field the schema requires)."""
    a, b = [*models, "model-a", "model-b"][:2]
    return orjson.dumps(
        {
            "consensus": ["The answers agree on the main point."],
            "contradictions": [
                {"topic": "detail", "stances": [{"model": a, "stance": "yes"}, {"model": b, "stance": "no"}]}
            ],
            "partial_coverage": [{"models": [a], "point": "an edge case"}],
            "unique_insights": [{"model": b, "insight": "a caveat"}],
            "blind_spots": ["nobody mentioned cost"],
        }
    ).decode()


def _content_tokens(profile: Profile) -> list[str]:
    n = max(1, profile.tokens)
    if profile.size is None:
        return [_WORDS[i % len(_WORDS)] for i in range(n)]
    per, extra = divmod(max(profile.size, n), n)
    return [("x" * (per + (1 if i < extra else 0))) for i in range(n)]


def _split(text: str, n: int) -> list[str]:
    n = max(1, min(n, len(text)))
    step = -(-len(text) // n)
    return [text[i : i + step] for i in range(0, len(text), step)]


class Fake:
    """The request handler and its caches."""

    def __init__(self, profiles: dict[str, Profile], hang_cap_s: float) -> None:
        self.profiles = profiles
        self.trace: list[dict[str, Any]] | None = None  # a list while tracing
        self.hang_cap_s = hang_cap_s
        self.calls: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self._bodies: dict[tuple[Any, ...], Any] = {}
        self.created = int(time.time())

    def profile(self, model: str) -> Profile:
        return self.profiles.get(model) or self.profiles.get(model.rsplit("/", 1)[-1]) or parse_profile(model)

    def _content(self, model: str, profile: Profile, judge: bool) -> list[str]:
        if judge:
            return _split(analysis_json(["model-a", "model-b"]), profile.tokens)
        return _content_tokens(profile)

    def full_body(self, model: str, profile: Profile, *, judge: bool, n: int, wire: str = "chat") -> bytes:
        key = ("full", wire, model, judge, n)
        body = self._bodies.get(key)
        if body is None and wire == "responses":
            text = "".join(self._content(model, profile, judge))
            body = self._bodies[key] = orjson.dumps(fakewire.response_object(model, text, self.created))
        elif body is None and wire == "messages":
            text = "".join(self._content(model, profile, judge))
            body = self._bodies[key] = orjson.dumps(fakewire.message_object(model, text))
        elif body is None:
            text = "".join(self._content(model, profile, judge))
            message = {"role": "assistant", "content": text}
            body = orjson.dumps(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": self.created,
                    "model": model,
                    "choices": [
                        {"index": i, "message": message, "finish_reason": "stop", "logprobs": None} for i in range(n)
                    ],
                    "usage": USAGE,
                }
            )
            self._bodies[key] = body
        return body

    def stream_events(
        self, model: str, profile: Profile, *, judge: bool, usage: bool, wire: str = "chat"
    ) -> list[bytes]:
        key = ("stream", wire, model, judge, usage)
        events = self._bodies.get(key)
        if events is None and wire == "responses":
            tokens = self._content(model, profile, judge)
            events = self._bodies[key] = fakewire.responses_stream(model, tokens, self.created)
        elif events is None and wire == "messages":
            events = self._bodies[key] = fakewire.messages_stream(model, self._content(model, profile, judge))
        elif events is None:
            tokens = self._content(model, profile, judge)
            events = []
            for i, token in enumerate(tokens):
                delta: dict[str, Any] = {"content": token}
                if i == 0:
                    delta = {"role": "assistant", "content": token}
                last = i == len(tokens) - 1
                chunk = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if last else None}],
                }
                events.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
            tail = b""
            if usage:
                chunk = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": model,
                    "choices": [],
                    "usage": USAGE,
                }
                tail = b"data: " + orjson.dumps(chunk) + b"\n\n"
            events[-1] = events[-1] + tail + b"data: [DONE]\n\n"
            self._bodies[key] = events
        return events

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self.answer(request, "chat")

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """The Responses API, as a provider that speaks it answers (usage always reported)."""
        return await self.answer(request, "responses")

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """Anthropic Messages, as a provider that speaks it answers (usage always reported)."""
        return await self.answer(request, "messages")

    async def answer(self, request: web.Request, wire: str) -> web.StreamResponse:
        """One call on the surface `wire` ("chat", "responses" or "messages"), as its model's profile says."""
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return web.Response(status=400, body=b'{"error":{"message":"bad json"}}', content_type="application/json")
        model = str(data.get("model") or "fake")
        profile = self.profile(model)
        response_format = data.get("response_format") or {}
        judge = wire == "chat" and isinstance(response_format, dict) and response_format.get("type") == "json_schema"
        stream = bool(data.get("stream"))
        n = int(data.get("n") or 1) if wire == "chat" else 1
        self.calls[model] += 1
        kind = "judge" if judge else ("stream" if stream else "complete")
        self.kinds[kind if wire == "chat" else f"{wire} {kind}"] += 1
        # Every wait is against an absolute time from the request's arrival, so timer slack does not
        # add up over many tokens: the duration is lat + (tok - 1) * every, give or take one wake-up.
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        seen = time.monotonic()  # loop.time() is in whole milliseconds on uvloop
        if profile.hang:
            await asyncio.sleep(self.hang_cap_s)
        every = profile.every_ms / 1000
        first_at = arrived + profile.latency_ms / 1000
        if not stream:
            await _sleep_until(loop, first_at + every * max(0, profile.tokens - 1))
            body = self.full_body(model, profile, judge=judge, n=n, wire=wire)
            response = web.Response(body=body, content_type="application/json")
            if self.trace is not None:
                await response.prepare(request)
                await response.write_eof()
                self._traced(model, "judge" if judge else "complete", seen, seen, time.monotonic())
            return response
        usage = wire != "chat" or bool((data.get("stream_options") or {}).get("include_usage"))
        events = self.stream_events(model, profile, judge=judge, usage=usage, wire=wire)
        await _sleep_until(loop, first_at)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        if not every:
            await response.write(b"".join(events))
            first_byte = time.monotonic()
        else:
            for i, event in enumerate(events):
                if i:
                    await _sleep_until(loop, first_at + i * every)
                await response.write(event)
                if not i:
                    first_byte = time.monotonic()
        await response.write_eof()
        if self.trace is not None:
            self._traced(model, "stream", seen, first_byte, time.monotonic())
        return response

    def _traced(self, model: str, kind: str, arrived: float, first_byte: float, done: float) -> None:
        assert self.trace is not None
        if len(self.trace) < 100_000:
            record = {"model": model, "kind": kind, "arrived": arrived, "first_byte": first_byte, "done": done}
            self.trace.append(record)

    async def start_trace(self, request: web.Request) -> web.Response:
        self.trace = []
        return web.Response(text="ok")

    async def stop_trace(self, request: web.Request) -> web.Response:
        records, self.trace = self.trace or [], None
        return web.Response(body=orjson.dumps(records), content_type="application/json")

    async def stats(self, request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps({"calls": dict(self.calls), "kinds": dict(self.kinds)}), content_type="application/json"
        )

    async def reset(self, request: web.Request) -> web.Response:
        self.calls.clear()
        self.kinds.clear()
        return web.Response(text="ok")

    async def models(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"object":"list","data":[]}', content_type="application/json")


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    delay = when - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


def build_app(fake: Fake) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    for prefix in ("", "/v1"):
        app.router.add_post(f"{prefix}/chat/completions", fake.chat)
        app.router.add_post(f"{prefix}/responses", fake.responses)
        app.router.add_post(f"{prefix}/messages", fake.messages)
        app.router.add_get(f"{prefix}/models", fake.models)
    app.router.add_get("/stats", fake.stats)
    app.router.add_post("/trace", fake.start_trace)
    app.router.add_get("/trace", fake.stop_trace)
    app.router.add_post("/reset", fake.reset)
    app.router.add_get("/health", _ok)
    return app


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    parser = argparse.ArgumentParser(description="fast fake OpenAI-compatible upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--models", default="{}", help="JSON mapping of model name -> profile fields")
    parser.add_argument("--hang-cap-s", type=float, default=600.0, help="how long a `hang` model sleeps at most")
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the fake upstream listens on loopback only")
    profiles = {name: Profile(**fields) for name, fields in orjson.loads(args.models).items()}
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    fake = Fake(profiles, args.hang_cap_s)
    web.run_app(
        build_app(fake),
        loop=loop,
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        backlog=4096,
        handler_cancellation=True,
    )


if __name__ == "__main__":
    main()
