"""The aiohttp transport (upstream/transport.py) against a real loopback server, through the upstream client."""

from __future__ import annotations

import asyncio
import gc
import gzip
import types
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from component.support import chunk_json, completion_json, sse_bytes
from openfusion.errors import UpstreamConnectionError, UpstreamStatusError, UpstreamTimeout
from openfusion.settings import HttpSettings, ProviderConfig, RetrySettings, Settings
from openfusion.upstream import client as client_module
from openfusion.upstream.client import UpstreamClient, build_http_client
from openfusion.upstream.providers import ProviderRegistry
from openfusion.upstream.stage import stage_limit
from openfusion.upstream.transport import (
    AiohttpBody,
    AiohttpReply,
    AiohttpTransport,
    body_blocks,
    mapped_error,
    read_body,
    wire_headers,
)

KEY = "sk-loopback-0123456789"
MESSAGES = [{"role": "user", "content": "Hi"}]
SSE = sse_bytes([chunk_json("Hel"), chunk_json("lo"), chunk_json(finish_reason="stop")])


@dataclass
class Loopback:
    """A provider on loopback whose behaviour is chosen by the requested model; it records what it saw."""

    port: int = 0
    heads: list[dict[str, list[str]]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    peers: list[tuple[str, int]] = field(default_factory=list)
    open_now: int = 0
    most_open: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.bodies.append(raw)
        heads: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            heads.setdefault(name.lower(), []).append(value)
        self.heads.append(heads)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peers.append(tuple(peer[:2]) if peer else ("", 0))
        model = orjson.loads(raw)["model"].removeprefix("lo/")
        return await getattr(self, "_" + model.replace("-", "_"))(request)

    async def _plain(self, _request: web.Request) -> web.Response:
        response = web.json_response(completion_json("plain answer"))
        response.set_cookie("session", "from-the-provider")
        return response

    async def _gzip(self, _request: web.Request) -> web.Response:
        body = gzip.compress(orjson.dumps(completion_json("gzipped answer")))
        return web.Response(body=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})

    async def _deflate(self, _request: web.Request) -> web.Response:
        body = zlib.compress(orjson.dumps(completion_json("deflated answer")))
        return web.Response(body=body, headers={"Content-Type": "application/json", "Content-Encoding": "deflate"})

    async def _failing(self, _request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "overloaded right now"}}, status=503)

    async def _limited(self, _request: web.Request) -> web.Response:
        headers = CIMultiDict([("Retry-After", "7"), ("X-Request-Id", "first"), ("X-Request-Id", "second")])
        body = {"error": {"message": "slow down please"}}
        return web.json_response(body, status=429, reason="Slow Down", headers=headers)

    async def _hold(self, _request: web.Request) -> web.Response:
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self.release.wait()
        finally:
            self.open_now -= 1
        return web.json_response(completion_json("held answer"))

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for start in range(0, len(SSE), 7):  # split mid-line, mid-field, mid-JSON
            await response.write(SSE[start : start + 7])
            await asyncio.sleep(0.001)
        await response.write_eof()
        return response

    async def _stream_gzip(self, request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": "text/event-stream", "Content-Encoding": "gzip"}
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        packed = gzip.compress(SSE)
        for start in range(0, len(packed), 11):
            await response.write(packed[start : start + 11])
        await response.write_eof()
        return response

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(sse_bytes([chunk_json("first")], done=False))
            for _ in range(500):  # bounded: 10 s at most
                await asyncio.sleep(0.02)
                await response.write(b": still here\n\n")
        except (ConnectionError, asyncio.CancelledError):
            self.gone.set()
            raise
        return response

    async def _slow(self, _request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response(completion_json("too late"))


@pytest.fixture
async def loopback() -> AsyncIterator[Loopback]:
    provider = Loopback()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", provider.chat)
    app.router.add_get("/v1/echo", _echo_query)
    app.router.add_put("/v1/echo", _echo_body)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    provider.port = server.port or 0
    try:
        yield provider
    finally:
        provider.release.set()
        await server.close()


async def _echo_query(request: web.Request) -> web.Response:
    return web.json_response(dict(request.query))


async def _echo_body(request: web.Request) -> web.Response:
    return web.Response(body=await request.read(), headers={"X-Chunked": str(request.headers.get("Transfer-Encoding"))})


@pytest.fixture
async def make_upstream(loopback: Loopback) -> AsyncIterator[Any]:
    """UpstreamClients on build_http_client's aiohttp transport, to the loopback provider; closed afterwards."""
    clients: list[httpx.AsyncClient] = []

    def make(*, attempts: int = 1, **http: Any) -> UpstreamClient:
        settings = HttpSettings(transport="aiohttp", **http)
        client = build_http_client(settings)
        clients.append(client)
        retry = RetrySettings(max_attempts=attempts, initial_backoff_s=0, max_backoff_s=0)
        return UpstreamClient(client, _registry_to(loopback.base_url), retry, call_timeout_s=settings.call_timeout_s)

    yield make
    for client in clients:
        await client.aclose()


async def test_build_http_client_uses_the_own_transport() -> None:
    async with build_http_client(HttpSettings(transport="aiohttp", max_connections=7)) as http:
        transport = http._transport_for_url(httpx.URL("https://example.test/"))
        assert isinstance(transport, AiohttpTransport)
        assert transport.limits.max_connections == 7


async def test_a_completion_goes_out_with_the_headers_httpx_would_send(loopback: Loopback, make_upstream: Any) -> None:
    completion = await make_upstream().complete("lo/plain", {"messages": MESSAGES})

    assert completion.content == "plain answer"
    (heads,) = loopback.heads
    assert heads["host"] == [f"127.0.0.1:{loopback.port}"]
    assert heads["content-length"] == [str(len(loopback.bodies[0]))]
    assert heads["authorization"] == [f"Bearer {KEY}"]
    assert heads["content-type"] == ["application/json"]
    assert orjson.loads(loopback.bodies[0])["messages"] == MESSAGES


async def test_a_cookie_a_provider_sets_is_never_sent_back(loopback: Loopback, make_upstream: Any) -> None:
    client = make_upstream()
    client.registry = _registry_to(f"http://localhost:{loopback.port}/v1")  # a name: cookies for an IP are never kept
    await client.complete("lo/plain", {"messages": MESSAGES})
    await client.complete("lo/plain", {"messages": MESSAGES})

    assert all("cookie" not in heads for heads in loopback.heads)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_an_encoded_answer_is_decoded(loopback: Loopback, make_upstream: Any, encoding: str) -> None:
    completion = await make_upstream().complete(f"lo/{encoding}", {"messages": MESSAGES})

    assert completion.content == f"{'gzipped' if encoding == 'gzip' else 'deflated'} answer"
    assert "gzip" in loopback.heads[0]["accept-encoding"][0]


@pytest.mark.parametrize("model", ["lo/stream", "lo/stream-gzip"])
async def test_a_stream_split_anywhere_arrives_whole(make_upstream: Any, model: str) -> None:
    async with make_upstream().stream(model, {"messages": MESSAGES}) as chunks:
        received = [chunk async for chunk in chunks]

    deltas = [choice["delta"].get("content") for chunk in received for choice in chunk["choices"]]
    assert "".join(delta for delta in deltas if delta) == "Hello"


async def test_an_error_status_is_read_and_reported(make_upstream: Any) -> None:
    with pytest.raises(UpstreamStatusError, match="HTTP 503: overloaded right now") as caught:
        await make_upstream().complete("lo/failing", {"messages": MESSAGES})

    assert caught.value.upstream_status == 503


async def test_max_connections_bounds_the_pool(loopback: Loopback, make_upstream: Any) -> None:
    client = make_upstream(max_connections=2)
    calls = [asyncio.create_task(client.complete("lo/hold", {"messages": MESSAGES})) for _ in range(5)]
    for _ in range(200):  # bounded: 2 s
        if loopback.open_now == 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # room for a third connection, if the pool allowed one
    assert loopback.open_now == 2
    loopback.release.set()

    completions = await asyncio.gather(*calls)

    assert [c.content for c in completions] == ["held answer"] * 5
    assert loopback.most_open == 2


async def test_leaving_a_stream_early_closes_its_connection(loopback: Loopback, make_upstream: Any) -> None:
    client = make_upstream()
    async with client.stream("lo/endless", {"messages": MESSAGES}) as chunks:
        first = await anext(chunks)
    assert first["choices"][0]["delta"]["content"] == "first"

    async with asyncio.timeout(5):
        await loopback.gone.wait()  # the provider saw the connection go
    await client.complete("lo/plain", {"messages": MESSAGES})
    assert loopback.peers[1] != loopback.peers[0]  # the next call did not get the half-read connection


async def test_a_read_timeout_is_a_timeout(make_upstream: Any) -> None:
    with pytest.raises(UpstreamTimeout, match="timed out"):
        await make_upstream(read_timeout_s=0.2).complete("lo/slow", {"messages": MESSAGES})


async def test_a_refused_connection_was_never_sent(make_upstream: Any, loopback: Loopback) -> None:
    client = make_upstream()
    loopback.port = _closed_port()
    client.registry = _registry_to(loopback.base_url)

    with pytest.raises(UpstreamConnectionError, match="could not be reached") as caught:
        await client.complete("lo/plain", {"messages": MESSAGES})

    assert caught.value.cause == "connection_refused"
    assert caught.value.sent is False


async def test_the_client_s_own_send_path_works_too(loopback: Loopback) -> None:
    """Web search sends through httpx.AsyncClient.send: query strings, streamed request bodies, reads."""
    async with build_http_client(HttpSettings(transport="aiohttp")) as http:
        got = await http.get(f"{loopback.base_url}/echo", params={"q": "a b&c"})
        assert got.json() == {"q": "a b&c"}

        async def pieces() -> AsyncIterator[bytes]:
            yield b"one, "
            yield b"two"

        echoed = await http.put(f"{loopback.base_url}/echo", content=pieces())
        assert echoed.content == b"one, two"
        assert echoed.headers["x-chunked"] == "chunked"  # framed by aiohttp, no duplicate Transfer-Encoding

        async with http.stream("PUT", f"{loopback.base_url}/echo", content=b"x" * 70_000) as response:
            assert b"".join([block async for block in response.aiter_bytes()]) == b"x" * 70_000


async def test_a_body_is_read_straight_from_aiohttp_only_when_it_is_not_encoded(loopback: Loopback) -> None:
    transport = AiohttpTransport(limits=httpx.Limits())
    try:
        for model, expected in (("plain", "plain answer"), ("gzip", "gzipped answer")):
            request = httpx.Request("POST", f"{loopback.base_url}/chat/completions", json={"model": model})
            response = await transport.handle_async_request(request)
            assert isinstance(response.stream, AiohttpBody)
            assert response.stream.identity is (model == "plain")
            body = await read_body(response)
            await response.aclose()
            assert orjson.loads(body)["choices"][0]["message"]["content"] == expected

        request = httpx.Request("POST", f"{loopback.base_url}/chat/completions", json={"model": "stream-gzip"})
        response = await transport.handle_async_request(request)
        assert b"".join([block async for block in body_blocks(response)]) == SSE  # decoded by httpx
        await response.aclose()
    finally:
        await transport.aclose()


async def test_the_client_s_own_calls_build_no_httpx_request_or_response(
    make_upstream: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = {"request": 0, "response": 0, "headers": 0}
    for cls, name in ((httpx.Request, "request"), (httpx.Response, "response"), (httpx.Headers, "headers")):
        original = cls.__init__

        def counted(self: Any, *args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> None:
            built[_name] += 1
            _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counted)
    client = make_upstream()
    await client.complete("lo/plain", {"messages": MESSAGES})  # the endpoint's headers are made once, here
    built.update(request=0, response=0, headers=0)

    # A completion and a stream: not even the response's headers are parsed into httpx's.
    assert (await client.complete("lo/plain", {"messages": MESSAGES})).content == "plain answer"
    async with client.stream("lo/stream", {"messages": MESSAGES}) as chunks:
        assert len([chunk async for chunk in chunks]) == 3
    assert built == {"request": 0, "response": 0, "headers": 0}
    # An error and a pass-through read the response's headers, in httpx's form.
    with pytest.raises(UpstreamStatusError, match="HTTP 429"):
        await client.complete("lo/limited", {"messages": MESSAGES})
    forwarded = await client.forward("lo/plain", {"messages": MESSAGES}, stream=False)
    await forwarded.aclose()
    assert (built["request"], built["response"]) == (0, 0)

    # An encoded answer is httpx's to decode: it comes as an httpx.Response.
    assert (await client.complete("lo/gzip", {"messages": MESSAGES})).content == "gzipped answer"
    assert (built["request"], built["response"]) == (0, 1)


async def test_an_error_answer_reads_as_httpx_would_read_it(make_upstream: Any) -> None:
    client = make_upstream()
    with pytest.raises(UpstreamStatusError, match="HTTP 429: slow down please") as caught:
        await client.complete("lo/limited", {"messages": MESSAGES})

    error = caught.value
    assert (error.upstream_status, error.retry_after) == (429, 7)
    assert error.headers is not None
    assert error.headers["x-request-id"] == "first, second"  # names lowercase, a repeated header's values joined
    forwarded = await client.forward("lo/limited", {"messages": MESSAGES}, stream=False)
    assert forwarded.status_code == 429
    assert forwarded.headers["retry-after"] == "7"
    assert forwarded.headers["x-request-id"] == "first, second"


@pytest.mark.parametrize("model", ["plain", "limited", "failing", "stream"])
async def test_a_reply_reads_as_the_httpx_response_would(loopback: Loopback, model: str) -> None:
    """`post`'s reply and `handle_async_request`'s httpx.Response, to the same request: the same status, reason,
    headers (but the date) and body."""
    transport = AiohttpTransport(limits=httpx.Limits())
    url = httpx.URL(f"{loopback.base_url}/chat/completions")
    body = orjson.dumps({"model": model})
    headers = httpx.Headers({"Host": url.netloc.decode(), "Content-Length": str(len(body))})

    async def read(response: Any) -> tuple[Any, ...]:
        try:
            items = [(k, v) for k, v in response.headers.multi_items() if k != "date"]
            return response.status_code, response.reason_phrase, items, await read_body(response)
        finally:
            await response.aclose()

    try:
        request = httpx.Request("POST", url, headers=headers, content=body)
        as_httpx = await read(await transport.handle_async_request(request))
        reply = await transport.post(url, wire_headers(headers), body, {})
        assert isinstance(reply, AiohttpReply)
        assert await read(reply) == as_httpx
    finally:
        await transport.aclose()


_KEY = aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        # Every connection error arrives as ConnectTimeout, as httpx-aiohttp reported it: failures.diagnose reads the
        # real cause from the chain.
        (
            aiohttp.ClientConnectorError(
                aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None),
                ConnectionRefusedError(111, "refused"),
            ),
            httpx.ConnectTimeout,
        ),
        (aiohttp.ServerDisconnectedError(), httpx.ConnectTimeout),
        (aiohttp.SocketTimeoutError(), httpx.ReadTimeout),
        (aiohttp.ConnectionTimeoutError(), httpx.ConnectTimeout),
        (aiohttp.ClientPayloadError("cut short"), httpx.ReadError),
        (aiohttp.InvalidUrlClientError("nowhere"), httpx.UnsupportedProtocol),
    ],
)
def test_aiohttp_errors_map_to_httpx_errors(raised: Exception, expected: type[httpx.HTTPError]) -> None:
    assert type(mapped_error(raised)) is expected


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _registry_to(base_url: str) -> ProviderRegistry:
    provider = ProviderConfig(name="lo", base_url=base_url, api_key_env="LO_KEY", models=["lo/*"])
    return ProviderRegistry.from_settings(Settings(providers=[provider], builtin_providers=False), {"LO_KEY": KEY})


async def test_a_streamed_answer_does_not_hold_its_request_body(loopback: Loopback, make_upstream: Any) -> None:
    """A synthesizer's answer streams for minutes; its request body (the whole prompt) is not kept meanwhile."""
    prompt = "the synthesizer's prompt, every panel answer in it " * 40
    async with make_upstream().stream("lo/endless", {"messages": [{"role": "user", "content": prompt}]}) as chunks:
        assert (await anext(chunks))["choices"][0]["delta"]["content"] == "first"
        assert b"every panel answer in it" in loopback.bodies[0]  # the provider got it
        loopback.bodies.clear()
        held = [found for found in _reachable_bytes(chunks) if b"every panel answer in it" in found]
    assert held == []


def _reachable_bytes(root: Any) -> list[bytes]:
    """The bytes reachable from `root` through object references; module-level state and event loops left out."""
    shared = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.CodeType)
    shared += (asyncio.AbstractEventLoop,)  # through the loop, everything else in the process (the provider too)
    seen, todo, found = {id(root)}, [root], []
    while todo:
        obj = todo.pop()
        if isinstance(obj, bytes):
            found.append(obj)
            continue
        for ref in gc.get_referents(obj):
            if id(ref) not in seen and not isinstance(ref, shared):
                seen.add(id(ref))
                todo.append(ref)
    return found


class _CountedLimits:
    """The client module's `asyncio`, with `asyncio.timeout` counted: how many limits its attempts set."""

    def __init__(self) -> None:
        self.set = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def timeout(self, delay: float | None) -> asyncio.Timeout:
        self.set += 1
        return asyncio.timeout(delay)


@pytest.fixture
def counted_limits(monkeypatch: pytest.MonkeyPatch) -> _CountedLimits:
    counted = _CountedLimits()
    monkeypatch.setattr(client_module, "asyncio", counted)
    return counted


async def test_a_call_in_a_stage_that_ends_first_sets_no_limit_of_its_own(
    make_upstream: Any, counted_limits: _CountedLimits
) -> None:
    client = make_upstream(call_timeout_s=300)
    await client.complete("lo/plain", {"messages": MESSAGES})
    assert counted_limits.set == 1  # outside a stage: the attempt's own limit

    async with stage_limit(60):
        await client.complete("lo/plain", {"messages": MESSAGES})
    assert counted_limits.set == 1  # the stage ends before the attempt's 300 s would: no second timer

    async with stage_limit(600):
        await client.complete("lo/plain", {"messages": MESSAGES})
    assert counted_limits.set == 2  # a stage that ends later: the attempt keeps its own

    async with stage_limit(60):
        await asyncio.create_task(client.complete("lo/plain", {"messages": MESSAGES}))
    assert counted_limits.set == 3  # another task, which the stage's limit does not cancel: its own limit


async def test_a_shorter_call_limit_still_applies_inside_a_stage(make_upstream: Any) -> None:
    async with stage_limit(30):
        with pytest.raises(UpstreamTimeout, match=r"http\.call_timeout_s"):
            await make_upstream(call_timeout_s=0.2).complete("lo/slow", {"messages": MESSAGES})


async def test_the_stage_limit_alone_ends_a_call_that_sets_none(make_upstream: Any) -> None:
    client = make_upstream(call_timeout_s=300)
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        async with stage_limit(0.2):
            await client.complete("lo/slow", {"messages": MESSAGES})
    assert asyncio.get_running_loop().time() - started < 1.5  # the 2 s upstream was not waited for
