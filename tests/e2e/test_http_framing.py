"""Requests the HTTP parser cannot read, against the real server over raw sockets.

Each is answered in the API's error shape (OpenAI's, Anthropic's on /v1/messages) with `Connection: close`,
never uvicorn's plain text; requests pipelined before it on the same connection still get their answers first.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time

import pytest

from e2e.test_connection_limits import PATIENCE_S, Start, connect, read_until_closed
from fakes.upstream import FakeUpstream, Script, wait_until

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


def split_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The HTTP/1.1 responses in `data`, each (status, headers, body); every one must carry a Content-Length."""
    responses = []
    while data:
        head, separator, rest = data.partition(b"\r\n\r\n")
        assert separator, f"an unfinished response: {data[:200]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        length = int(headers["content-length"])
        responses.append((int(status_line.split(" ", 2)[1]), headers, rest[:length]))
        data = rest[length:]
    return responses


def exchange(url: str, data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Send `data` in one write; every response until the server closes the connection."""
    with connect(url) as sock:
        sock.sendall(data)
        return split_responses(read_until_closed(sock))


def assert_openai_error(response: tuple[int, dict[str, str], bytes], status: int, code: str) -> str:
    """An OpenAI-shaped error with `status` and `code` that closes the connection; returns its message."""
    got, headers, body = response
    assert got == status, body
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "invalid_request_error" and error["code"] == code
    return str(error["message"])


@pytest.mark.parametrize(
    ("request_bytes", "status", "code", "reason"),
    [
        (b"GARBAGE /healthz HTTP/1.1\r\nHost: t\r\n\r\n", 400, "malformed_request", "Invalid method"),
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n", 400, "malformed_request", "header token"),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
            400,
            "malformed_request",
            "chunk size",
        ),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "malformed_request",
            "Transfer-Encoding",
        ),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            413,
            "payload_too_large",
            "Content-Length",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nCookie: " + b"c" * 40_000 + b"\r\n\r\n",
            431,
            "request_headers_too_large",
            "",
        ),
    ],
    ids=["request-line", "header", "chunked", "length-and-chunked", "length-overflow", "oversized-headers"],
)
def test_an_unreadable_request_gets_a_json_error(
    server: str, request_bytes: bytes, status: int, code: str, reason: str
) -> None:
    [response] = exchange(server, request_bytes)
    message = assert_openai_error(response, status, code)
    assert reason in message and "Invalid HTTP request received" not in message


def test_an_unreadable_request_to_messages_gets_anthropics_shape(server: str) -> None:
    [(status, headers, body)] = exchange(server, b"POST /v1/messages HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n")
    assert status == 400 and headers["connection"] == "close"
    answer = json.loads(body)
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    assert "header token" in answer["error"]["message"]


def test_requests_pipelined_before_an_unreadable_one_are_answered_first(server: str) -> None:
    responses = exchange(server, HEALTH + HEALTH + b"GARBAGE / HTTP/1.1\r\n\r\n" + HEALTH)
    # Both requests before it are answered, in order, then the refusal closes the connection: the last
    # request, after the unreadable one, cannot be read, and the client knows to send it again.
    assert [status for status, _, _ in responses] == [200, 200, 400]
    assert [json.loads(body)["status"] for _, _, body in responses[:2]] == ["ok", "ok"]
    assert_openai_error(responses[2], 400, "malformed_request")


def test_a_slow_answer_before_an_unreadable_request_is_not_cut_off(server: str, upstream: FakeUpstream) -> None:
    upstream.script("plain", Script(content="Direct answer.", delay_s=0.5))
    body = json.dumps({"model": "fake/plain", "messages": [{"role": "user", "content": "Hi"}]}).encode()
    chat = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    # The second request's headers are read, its body is not: it waits behind the first, and is refused after it.
    broken = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    responses = exchange(server, chat + broken)
    assert [status for status, _, _ in responses] == [200, 400]
    assert json.loads(responses[0][2])["choices"][0]["message"]["content"] == "Direct answer."
    assert_openai_error(responses[1], 400, "malformed_request")
    assert len(upstream.calls_for("plain")) == 1


def test_a_bad_body_in_intact_framing_keeps_the_connection(server: str) -> None:
    bad_json = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    bad_json += b"Content-Length: 5\r\n\r\n{oops"
    with connect(server) as sock:
        sock.sendall(bad_json + HEALTH)
        sock.settimeout(8)
        received = b""
        while received.count(b"HTTP/1.1 ") < 2 or not received.endswith(b"}"):
            received += sock.recv(65536)
        responses = split_responses(received)
        assert [status for status, _, _ in responses] == [400, 200]
        assert "connection" not in responses[0][1]
        sock.sendall(HEALTH)  # the connection is still good
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


UPGRADE_CHAT = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
)


def test_a_request_that_asks_to_upgrade_is_served_as_sent(server: str, upstream: FakeUpstream) -> None:
    # As `curl --http2` sends to an http:// URL. The parser took the upgrade as done: the body went to the app as
    # empty ("The request body is empty") and the requests after it in the same read were dropped unanswered.
    upstream.script("plain", Script(content="Direct answer."))
    body = json.dumps({"model": "fake/plain", "messages": [{"role": "user", "content": "Hi"}]}).encode()
    chat = UPGRADE_CHAT + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    health = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket2\r\n\r\n"
    responses = exchange(
        server, chat + health + HEALTH + b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert [status for status, _, _ in responses] == [200, 200, 200, 200], responses[0][2]
    assert json.loads(responses[0][2])["choices"][0]["message"]["content"] == "Direct answer."
    assert [json.loads(body)["status"] for _, _, body in responses[1:]] == ["ok"] * 3


def test_an_upgrade_not_made_fills_no_log(server: str, caplog: pytest.LogCaptureFixture) -> None:
    # uvicorn logged two warnings for each (one saying no WebSocket library was installed): a client could flood the
    # log with them at will, for requests that are now served as sent.
    health = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    with caplog.at_level("DEBUG", logger="uvicorn.error"):
        responses = exchange(server, health * 20 + b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert [status for status, _, _ in responses] == [200] * 21
    said = [record for record in caplog.records if "pgrade" in record.getMessage()]
    assert said and all(record.levelname == "DEBUG" for record in said), [r.getMessage() for r in said]


def test_the_body_of_a_request_that_asks_to_upgrade_is_never_a_request(start_server: Start) -> None:
    # The skipped body, arriving after its headers, was parsed as the next request: one smuggled inside it was served.
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    with start_server(server={"keep_alive_timeout_s": 1}) as url, connect(url) as sock:
        sock.sendall(UPGRADE_CHAT + b"Content-Length: %d\r\n\r\n" % len(smuggled))
        time.sleep(0.3)  # the headers read on their own, as a proxy forwarding them first would have them
        sock.sendall(smuggled)
        responses = split_responses(read_until_closed(sock))  # closed once idle
    assert [status for status, _, _ in responses] == [400]
    assert "not valid JSON" in json.loads(responses[0][2])["error"]["message"]


def test_a_request_that_asks_to_upgrade_with_a_chunked_body_is_refused(server: str) -> None:
    [response] = exchange(server, UPGRADE_CHAT + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n" + HEALTH)
    assert "chunked" in assert_openai_error(response, 400, "malformed_request")


def chat(model: str, content: str, *, close: bool = False) -> bytes:
    """A Chat Completions request, whole, as a client writes it."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": content}]}).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    return head + (b"Connection: close\r\n" if close else b"") + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


def test_a_body_pipelined_behind_a_slow_answer_is_read_after_it(start_server: Start, upstream: FakeUpstream) -> None:
    # The server stops reading while the first answer is under way: the second body, sent at once but larger than
    # one read (and under the 1 MiB aiohttp warns about), waits in the socket. Its deadline ran all the same, and it
    # was refused as too slow to arrive.
    upstream.script("slow", Script(content="Slow answer.", delay_s=3))
    upstream.script("quick", Script(content="Quick answer."))

    with start_server(server={"body_timeout_s": 1}) as url:
        responses = exchange(url, chat("fake/slow", "Hi") + chat("fake/quick", "x" * 900_000, close=True))
    assert [status for status, _, _ in responses] == [200, 200], responses[-1][2][:300]
    answers = [json.loads(body)["choices"][0]["message"]["content"] for _, _, body in responses]
    assert answers == ["Slow answer.", "Quick answer."]


def read_answers(sock: socket.socket) -> list[tuple[int, dict[str, str], bytes]]:
    """The responses the server sends until it closes the connection, read as they come (a close with bytes of
    ours unread is a reset, which would take with it what the client had not read yet)."""
    sock.settimeout(PATIENCE_S)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return split_responses(received)


def test_headers_pipelined_behind_a_slow_answer_are_timed_from_when_they_are_read(
    start_server: Start, upstream: FakeUpstream
) -> None:
    # While the first answer is under way, a second request comes whole and a third begins in the same write: the
    # second's headers stop the server's reading (it is queued), the third's first bytes start its header deadline,
    # and the rest of its headers, sent a moment later, wait in the socket until the first answer has gone. The
    # deadline ran all the same, and the connection was closed with the first two answers still owed.
    upstream.script("slow", Script(content="Slow answer.", delay_s=3))
    upstream.script("quick", Script(content="Quick answer."))
    third = chat("fake/quick", "Third", close=True)
    with start_server(server={"header_timeout_s": 1}) as url, connect(url) as sock:
        sock.sendall(chat("fake/slow", "First"))
        wait_until(lambda: bool(upstream.calls_for("slow")), timeout=10)  # the first is being answered
        sock.sendall(chat("fake/quick", "Second") + third[:40])
        time.sleep(0.3)
        sock.sendall(third[40:])  # promptly, but the server reads nothing until the first answer has gone
        responses = read_answers(sock)
    assert [status for status, _, _ in responses] == [200, 200, 200], responses
    answers = [json.loads(body)["choices"][0]["message"]["content"] for _, _, body in responses]
    assert answers == ["Slow answer.", "Quick answer.", "Quick answer."]


def test_headers_that_stop_after_a_request_are_refused_after_its_answer(
    start_server: Start, upstream: FakeUpstream
) -> None:
    # A request, and in the same write the beginning of a second one whose headers never end. The second's first
    # bytes, read with the end of the first, went uncounted: its deadline took it for a connection that had asked
    # nothing and closed it without a word, the first answer (still under way) lost with it.
    upstream.script("slow", Script(content="Slow answer.", delay_s=2))
    with start_server(server={"header_timeout_s": 1}) as url, connect(url) as sock:
        sock.sendall(chat("fake/slow", "First") + b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n")
        responses = read_answers(sock)
    assert [status for status, _, _ in responses] == [200, 408], responses
    assert json.loads(responses[0][2])["choices"][0]["message"]["content"] == "Slow answer."
    assert_openai_error(responses[1], 408, "request_timeout")


@pytest.mark.parametrize("framing", ["chunked", "declared"])
def test_a_body_refused_for_its_size_closes_the_connection(start_server: Start, framing: str) -> None:
    # The 413 went out with the connection kept: the server then read and discarded whatever the client still sent
    # (~6 GB in 5 s on one connection), or waited for the rest of a declared body it would never use.
    with start_server(max_body_bytes=1024) as url, connect(url) as sock:
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        chunk = b"x" * 65536
        if framing == "chunked":
            sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"10000\r\n" + chunk + b"\r\n"
        else:
            sock.sendall(head + b"Content-Length: 10000000000\r\n\r\n")
        sock.sendall(chunk)
        answer = b""
        while b"payload_too_large" not in answer:
            answer += sock.recv(65536)
        sent, deadline = 0, time.monotonic() + 3
        with contextlib.suppress(OSError):  # the server closed the connection: no more is taken
            while time.monotonic() < deadline:
                sock.sendall(chunk)
                sent += len(chunk)
        assert sent < 16 * 1024 * 1024, f"the server took {sent} more bytes of a body it had refused"
        rest = read_until_closed(sock, timeout=10)
    [(status, headers, body)] = split_responses(answer + rest)
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "payload_too_large"
