"""The `[server]` limits against the real server: header size and count, slow headers and bodies, idle connections.

Each test speaks raw HTTP/1.1 over a socket, as an attacker would, to openfusion under uvicorn with its
own connection protocol (`serve_in_thread` runs the same one `openfusion serve` does).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager

import httpx
import pytest

Start = Callable[..., AbstractContextManager[str]]
# Generous on a shared, loaded machine: each limit under test is 1 s, and the old behaviour was "never".
PATIENCE_S = 8.0


@contextmanager
def connect(url: str) -> Iterator[socket.socket]:
    """A raw TCP connection to the server."""
    parsed = httpx.URL(url)
    sock = socket.create_connection((parsed.host, parsed.port or 80), timeout=PATIENCE_S)
    try:
        yield sock
    finally:
        sock.close()


def read_until_closed(sock: socket.socket, *, timeout: float = PATIENCE_S) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is still open after `timeout`."""
    sock.settimeout(timeout)
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            message = f"the server kept the connection open for {timeout} s; got {received[:200]!r}"
            raise AssertionError(message) from None
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def status_and_error(response: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body).get("error", {}) if body else {}


def is_closed(sock: socket.socket) -> bool:
    """Whether the server has closed this connection (without waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)


def trickle(sock: socket.socket, piece: bytes, *, every_s: float, for_s: float) -> bool:
    """Send `piece` every `every_s` seconds; True as soon as the server stops taking it, False after `for_s`."""
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return True
        sock.settimeout(every_s)
        try:
            if sock.recv(65536, socket.MSG_PEEK):
                return True  # the server answered mid-request
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
        else:
            return True  # closed
    return False


def test_too_many_headers_are_refused_with_431(start_server: Start) -> None:
    with start_server(server={"max_headers": 20}) as url:
        fillers = [b"X-Filler-%d: x\r\n" % n for n in range(30)]
        with connect(url) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"".join(fillers) + b"\r\n")
            status, error = status_and_error(read_until_closed(sock))
        assert status == 431
        assert error["code"] == "request_headers_too_large" and "at most 20" in str(error["message"])
        with connect(url) as sock:  # within the limit: served as usual
            head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            sock.sendall(head + b"".join(fillers[:18]) + b"\r\n")
            assert status_and_error(read_until_closed(sock))[0] == 200


def test_headers_over_the_byte_limit_are_refused_even_when_they_arrive_whole(start_server: Start) -> None:
    with start_server() as url, connect(url) as sock:  # the default limit: 32 KiB
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nCookie: " + b"c" * 40_000 + b"\r\n\r\n")
        status, error = status_and_error(read_until_closed(sock))
    assert status == 431 and "32768 bytes" in str(error["message"])


def test_an_endless_header_is_cut_off_at_the_limit(start_server: Start) -> None:
    with start_server() as url, connect(url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Endless: ")
        sent, stopped = 0, False
        while sent < 8 * 1024 * 1024 and not stopped:
            try:
                sock.sendall(b"a" * 65536)
                sent += 65536
            except (BrokenPipeError, ConnectionResetError):
                stopped = True
        response = read_until_closed(sock) if not stopped else b""
    # The server refused after about the limit; the bytes in flight are the kernel's buffers, not its memory.
    assert stopped or response.startswith(b"HTTP/1.1 431"), f"the server took {sent} bytes of one header"


def test_an_endless_trailer_is_cut_off_at_the_limit(start_server: Start) -> None:
    # A chunked body's trailers are headers the parser holds until they end: one that never did grew the server's
    # memory for as long as the body's deadline (60 s by default), at whatever rate the client could send.
    with start_server() as url, connect(url) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Endless: "
        )
        assert trickle(sock, b"a" * 4096, every_s=0.05, for_s=PATIENCE_S), "the server took a trailer without end"
        status, error = status_and_error(read_until_closed(sock))
    assert status == 431 and error["code"] == "request_headers_too_large"
    assert "trailers" in str(error["message"]) and "32768 bytes" in str(error["message"])


def test_a_body_in_many_small_chunks_is_not_mistaken_for_a_long_trailer(start_server: Start) -> None:
    body = b'{"model": "fusion", "messages": []}' + b" " * 60_000
    chunked = b"".join(b"1\r\n%c\r\n" % byte for byte in body) + b"0\r\nX-Trailer: fine\r\n\r\n"
    with start_server() as url, connect(url) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for start in range(0, len(chunked), 4096):  # ~6 bytes of framing to each byte of data
            sock.sendall(chunked[start : start + 4096])
        status, error = status_and_error(read_until_closed(sock))
    assert status == 400 and "messages" in str(error["message"])  # read whole, refused for what it says


def test_headers_that_arrive_too_slowly_get_408(start_server: Start) -> None:
    with start_server(server={"header_timeout_s": 1}) as url, connect(url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        started = time.monotonic()
        # A header byte every 0.2 s: each read is quick, the whole never ends (slowloris).
        assert trickle(sock, b"X", every_s=0.2, for_s=PATIENCE_S), "the server waited for the headers forever"
        status, error = status_and_error(read_until_closed(sock))
    assert status == 408 and error["code"] == "request_timeout"
    assert time.monotonic() - started < PATIENCE_S


def test_a_connection_that_never_asks_is_closed(start_server: Start) -> None:
    with start_server(server={"header_timeout_s": 1}) as url, connect(url) as sock:
        assert read_until_closed(sock) == b""


def test_a_body_that_trickles_gets_408_and_the_app_stops_waiting(start_server: Start) -> None:
    with start_server(server={"body_timeout_s": 1}) as url, connect(url) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n{"
        )
        assert trickle(sock, b" ", every_s=0.2, for_s=PATIENCE_S), "the server waited for the body forever"
        status, error = status_and_error(read_until_closed(sock))
        assert status == 408 and "body" in str(error["message"])
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(start_server: Start) -> None:
    with start_server(server={"keep_alive_timeout_s": 1}) as url, connect(url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.settimeout(PATIENCE_S)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        # uvicorn's own default was 5 s; the setting makes it 1 s.
        read_until_closed(sock, timeout=3.5)


def test_blank_lines_do_not_keep_an_idle_connection_open(start_server: Start) -> None:
    # A client may send blank lines before a request (RFC 9112 2.2); they begin none. Each one stopped the keep-alive
    # timer, and a client that sent one now and then held its connection (and its file descriptor) for good.
    with start_server(server={"keep_alive_timeout_s": 1}) as url, connect(url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.settimeout(PATIENCE_S)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert trickle(sock, b"\r\n", every_s=0.2, for_s=PATIENCE_S), "blank lines kept an idle connection open"
        assert read_until_closed(sock) == b""


def test_past_max_connections_the_longest_idle_connection_gives_way(start_server: Start) -> None:
    with start_server(server={"max_connections": 20, "probe_connections": 0}) as url, ExitStack() as stack:
        idle = []
        for _ in range(30):
            idle.append(stack.enter_context(connect(url)))
            time.sleep(0.01)  # in order of age
        assert httpx.get(f"{url}/healthz", timeout=PATIENCE_S).status_code == 200
        deadline = time.monotonic() + PATIENCE_S
        while sum(map(is_closed, idle)) < 11 and time.monotonic() < deadline:
            time.sleep(0.05)
        closed = [is_closed(sock) for sock in idle]
    # 30 idle + the probe's connection = 31 for 20 places: the 11 oldest gave way, the newest stayed.
    assert closed == [True] * 11 + [False] * 19


def test_when_every_connection_is_busy_only_the_health_probes_get_in(start_server: Start) -> None:
    limits = {"max_connections": 4, "probe_connections": 2, "body_timeout_s": 30}
    with start_server(server=limits) as url, ExitStack() as stack:
        for _ in range(4):  # busy: headers sent, the body still to come
            sock = stack.enter_context(connect(url))
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: 50\r\n\r\n"
            )
        time.sleep(0.3)
        refused = httpx.get(f"{url}/v1/models", timeout=PATIENCE_S)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_busy"
        assert refused.headers["retry-after"] == "1"
        probe = httpx.get(f"{url}/healthz", timeout=PATIENCE_S)
        assert probe.status_code == 200 and probe.json()["status"] == "ok"
        assert httpx.get(f"{url}/readyz", timeout=PATIENCE_S).status_code in (200, 503)


@pytest.mark.parametrize("setting", [{"max_headers": 0}, {"header_timeout_s": 0}, {"max_header_bytes": 100}])
def test_nonsense_limits_are_refused_at_start_up(setting: dict[str, object]) -> None:
    from pydantic import ValidationError

    from openfusion.settings import Settings

    with pytest.raises(ValidationError):
        Settings(server=setting)


def test_websocket_handshakes_give_their_places_back(start_server: Start) -> None:
    # A WebSocket handshake hands the connection to another protocol: its place in the budget was never given back,
    # and once as many handshakes as places had been made (each refused), every new connection was refused.
    handshake = (
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    with start_server(server={"max_connections": 4, "probe_connections": 1}) as url:
        for _ in range(10):
            with connect(url) as sock:
                sock.sendall(handshake)
                assert read_until_closed(sock).startswith(b"HTTP/1.1 403")  # no route takes a WebSocket
        models = httpx.get(f"{url}/v1/models", timeout=PATIENCE_S)
        assert models.status_code == 200 and models.json()["object"] == "list"
