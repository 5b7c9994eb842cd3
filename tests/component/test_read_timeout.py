"""The lazily re-armed read timeout (upstream/read_timeout.py), over real aiohttp on loopback."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from openfusion.upstream.read_timeout import LazyReadTimeout, use_lazy_read_timeout
from openfusion.upstream.transport import AiohttpReply, AiohttpTransport, body_blocks


async def _drip(request: web.Request) -> web.StreamResponse:
    """`pieces` pieces, `gap` seconds apart, then (with `stall`) silence for `stall` seconds before the end."""
    pieces, gap, stall = int(request.query["pieces"]), float(request.query["gap"]), float(request.query["stall"])
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(pieces):
        await response.write(f"data: {i}\n\n".encode())
        await asyncio.sleep(gap)
    await asyncio.sleep(stall)
    await response.write_eof()
    return response


@pytest.fixture
async def drip_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/drip", _drip)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}/drip"
    finally:
        await server.close()


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    transport = AiohttpTransport(limits=httpx.Limits())
    try:
        yield transport
    finally:
        await transport.aclose()


@pytest.fixture
def arms(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The deadline of every timer a LazyReadTimeout arms."""
    armed: list[float] = []
    original = LazyReadTimeout._arm

    def counted(self: LazyReadTimeout, when: float) -> None:
        armed.append(when)
        original(self, when)

    monkeypatch.setattr(LazyReadTimeout, "_arm", counted)
    return armed


async def _read(transport: AiohttpTransport, url: str, *, read_s: float, **query: Any) -> list[bytes]:
    target = httpx.URL(url, params={key: str(value) for key, value in query.items()})
    headers = CIMultiDict([("Host", target.netloc.decode()), ("Content-Length", "0")])
    reply = await transport.post(target, headers, b"", {"connect": 5.0, "read": read_s, "pool": 5.0})
    try:
        assert isinstance(reply, AiohttpReply)
        assert isinstance(reply._response.connection.protocol, LazyReadTimeout)  # type: ignore[union-attr]
        return [block async for block in body_blocks(reply)]
    finally:
        await reply.aclose()


async def test_a_stream_that_keeps_coming_is_read_whole_with_one_timer(
    transport: AiohttpTransport, drip_url: str, arms: list[float]
) -> None:
    blocks = await _read(transport, drip_url, read_s=5.0, pieces=15, gap=0.01, stall=0)

    assert b"".join(blocks).count(b"data: ") == 15
    assert len(blocks) >= 10  # read by read: aiohttp's own timer would have been replaced at each of them
    assert len(arms) == 1


async def test_reads_closer_together_than_the_limit_keep_moving_its_deadline(
    transport: AiohttpTransport, drip_url: str, arms: list[float]
) -> None:
    # 0.45 s of reads 0.03 s apart under a 0.2 s limit: the timer fires and re-arms (twice, as timed here).
    blocks = await _read(transport, drip_url, read_s=0.2, pieces=15, gap=0.03, stall=0)

    assert b"".join(blocks).count(b"data: ") == 15
    assert len(arms) >= 2
    assert arms == sorted(arms)


async def test_a_stream_that_stops_times_out_the_limit_after_its_last_read(
    transport: AiohttpTransport, drip_url: str
) -> None:
    loop = asyncio.get_running_loop()
    times: list[float] = []
    target = httpx.URL(drip_url, params={"pieces": "3", "gap": "0.01", "stall": "3"})
    headers = CIMultiDict([("Host", target.netloc.decode()), ("Content-Length", "0")])
    reply = await transport.post(target, headers, b"", {"connect": 5.0, "read": 0.3, "pool": 5.0})
    try:
        with pytest.raises(httpx.ReadTimeout):
            async for _ in body_blocks(reply):
                times.append(loop.time())
        timed_out = loop.time()
    finally:
        await reply.aclose()

    assert times  # the pieces before the silence arrived
    assert 0.28 <= timed_out - times[-1] < 1.5


async def test_a_shorter_limit_rearms_the_timer_at_once() -> None:
    loop = asyncio.get_running_loop()
    protocol = LazyReadTimeout(loop)
    fired: list[float] = []
    protocol._on_read_timeout = lambda: fired.append(loop.time())  # type: ignore[method-assign]
    try:
        protocol._read_timeout = 30.0
        protocol._reschedule_timeout()
        protocol._read_timeout = 0.05  # the next request on this connection has a shorter limit
        started = loop.time()
        protocol._reschedule_timeout()
        await asyncio.sleep(0.3)
    finally:
        protocol._drop_timeout()

    assert len(fired) == 1
    assert fired[0] - started < 0.25


async def test_no_limit_arms_no_timer(arms: list[float]) -> None:
    protocol = LazyReadTimeout(asyncio.get_running_loop())
    protocol._read_timeout = None
    protocol._reschedule_timeout()

    assert arms == []
    assert protocol._read_timeout_handle is None


async def test_the_factory_is_replaced_only_when_it_is_aiohttp_s_own() -> None:
    connector = aiohttp.TCPConnector()
    try:
        assert use_lazy_read_timeout(connector) is True
        assert connector._factory.func is LazyReadTimeout  # type: ignore[attr-defined]
        unknown = functools.partial(object)
        connector._factory = unknown  # type: ignore[attr-defined]
        assert use_lazy_read_timeout(connector) is False
        assert connector._factory is unknown  # type: ignore[attr-defined]
    finally:
        await connector.close()
