"""CoalescedWrites: what one event-loop callback writes reaches the socket as one write."""

from __future__ import annotations

import asyncio
from typing import Any

from openfusion.api.coalesced_writes import CoalescedWrites
from openfusion.api.server_protocol import http_protocol


class _Transport:
    """Records what reaches the socket."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.extra = {"peername": ("127.0.0.1", 5555)}

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)


async def test_writes_in_one_callback_become_one() -> None:
    real = _Transport()
    transport = CoalescedWrites(real, asyncio.get_running_loop())  # type: ignore[arg-type]

    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"")  # an empty body message writes nothing
    transport.write(b"{}")
    assert real.writes == []  # not before this callback is done
    for _ in range(2):
        await asyncio.sleep(0)
        assert real.writes == []  # a head waits three passes (see the next tests)
    await asyncio.sleep(0)

    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]


class _Ordered(_Transport):
    """A socket that notes when the client's bytes reach it, beside the upstream requests' writes."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    def write(self, data: bytes) -> None:
        self.order.append("client")
        super().write(data)

    async def upstream_request_written(self) -> None:
        """aiohttp's `write_bytes` task for one upstream request."""
        self.order.append("upstream")

    async def panel_call(self) -> None:
        """A panel call's task: it makes the task that writes its upstream request, one pass later."""
        asyncio.get_running_loop().create_task(self.upstream_request_written())


async def test_a_head_leaves_after_the_upstream_writes_its_pass_made_ready() -> None:
    """A fusion stream starts in one pass: the run makes its panel calls' tasks, and the response writes its head
    (with the opening line). Each call's task makes the task that writes its upstream request (aiohttp's
    `write_bytes`), one pass later. Those writes are what the answer waits for: they leave before the head does."""
    real = _Ordered()
    transport = CoalescedWrites(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    calls = [asyncio.create_task(real.panel_call()) for _ in range(3)]
    transport.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    transport.write(b"1a\r\n: OPENFUSION PROCESSING\n\n\r\n")
    for _ in range(4):
        await asyncio.sleep(0)

    assert real.order == ["upstream", "upstream", "upstream", "client"]
    assert len(real.writes) == 1 and real.writes[0].startswith(b"HTTP/1.1 200 OK")
    await asyncio.gather(*calls)


async def test_a_head_written_before_the_panel_calls_are_made_still_leaves_after_their_requests() -> None:
    """The order of a stream driven by its response's task: the head and the opening line are written first, then
    the run's first step makes the panel calls' tasks, in the same step."""
    real = _Ordered()
    transport = CoalescedWrites(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    calls = [asyncio.create_task(real.panel_call()) for _ in range(3)]
    for _ in range(5):
        await asyncio.sleep(0)

    assert real.order == ["upstream", "upstream", "upstream", "client"]
    await asyncio.gather(*calls)


async def test_a_progress_line_leaves_after_the_request_its_step_made() -> None:
    """The judge starting: its progress line is written, then in the same step the call is made, whose request
    aiohttp writes from a task of its own. The request goes first."""
    real = _Ordered()
    transport = CoalescedWrites(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"1a\r\ndata: {}\n\n\r\n")  # a streamed chunk: no head
    writer = asyncio.get_running_loop().create_task(real.upstream_request_written())
    for _ in range(3):
        await asyncio.sleep(0)

    assert real.order == ["upstream", "client"]
    await writer


async def test_a_body_write_leaves_two_passes_later() -> None:
    real = _Transport()
    transport = CoalescedWrites(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"1a\r\ndata: {}\n\n\r\n")
    await asyncio.sleep(0)
    assert real.writes == []
    await asyncio.sleep(0)
    assert real.writes == [b"1a\r\ndata: {}\n\n\r\n"]


async def test_writes_in_separate_callbacks_stay_separate() -> None:
    real = _Transport()
    transport = CoalescedWrites(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    for chunk in (b"data: 1\n\n", b"data: 2\n\n"):  # a stream: one token, then the next one later
        transport.write(chunk)
        for _ in range(2):
            await asyncio.sleep(0)
    assert real.writes == [b"data: 1\n\n", b"data: 2\n\n"]


async def test_close_flushes_first_and_later_flushes_do_nothing() -> None:
    real = _Transport()
    transport = CoalescedWrites(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"last bytes")
    transport.close()
    await asyncio.sleep(0)  # the scheduled flush finds nothing left, and writes nothing after close

    assert real.writes == [b"last bytes"] and real.closed


async def test_everything_else_is_the_real_transports() -> None:
    real = _Transport()
    transport = CoalescedWrites(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    assert transport.get_extra_info("peername") == ("127.0.0.1", 5555)
    assert transport.is_closing() is False


def test_it_forwards_the_whole_transport_interface_by_name() -> None:
    """Every public method of asyncio's Transport is defined on the wrapper itself (no `__getattr__`, which would
    cost every attribute the wrapper reads of itself): a server that calls any of them reaches the real one."""
    interface = {name for name in dir(asyncio.Transport) if not name.startswith("_")}
    assert interface <= set(vars(CoalescedWrites))
    assert "__getattr__" not in vars(CoalescedWrites)


async def test_the_forwarded_methods_reach_a_real_socket_transport() -> None:
    """Over a real loopback connection: reading paused and resumed, buffer limits, extra info, and the buffer's size
    counting what is still pending in the wrapper."""
    loop = asyncio.get_running_loop()
    accepted: list[asyncio.StreamWriter] = []
    connected = asyncio.Event()

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        connected.set()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    real, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    transport = CoalescedWrites(real, loop)  # type: ignore[arg-type]
    try:
        assert transport.get_extra_info("peername") == ("127.0.0.1", port)
        transport.pause_reading()
        assert transport.is_reading() is False
        transport.resume_reading()
        assert transport.is_reading() is True
        transport.set_write_buffer_limits(high=4096, low=1024)
        assert transport.get_write_buffer_limits() == (1024, 4096)
        transport.write(b"12345")
        assert transport.get_write_buffer_size() == 5  # still pending here, not yet handed to the socket
        assert transport.can_write_eof() is True and transport.get_protocol() is real.get_protocol()
    finally:
        transport.close()
        async with asyncio.timeout(5):
            await connected.wait()  # the server's side of the connection, closed too
        for writer in accepted:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
    assert transport.is_closing()


def test_the_server_protocol_is_uvicorns_httptools_protocol() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    protocol = http_protocol()
    assert isinstance(protocol, type) and issubclass(protocol, HttpToolsProtocol)


async def test_a_complete_response_reaches_the_socket_before_the_app_does_anything_else() -> None:
    import uvicorn
    from uvicorn.server import ServerState

    real = _Transport()
    seen_when_sent: list[list[bytes]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        # What runs here before the next await (a response's background task: the request's record) must not
        # hold the answer back: it has reached the socket already.
        seen_when_sent.append(list(real.writes))

    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    protocol = http_protocol()(config=config, server_state=ServerState(), app_state={})  # type: ignore[operator, call-arg]
    protocol.connection_made(real)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    for _ in range(20):
        await asyncio.sleep(0)
        if seen_when_sent:
            break

    assert len(seen_when_sent) == 1
    (written,) = seen_when_sent[0]  # status line, headers and body in one write
    assert written.startswith(b"HTTP/1.1 200 OK\r\n") and written.endswith(b"\r\n\r\nok")
    protocol.connection_lost(None)
