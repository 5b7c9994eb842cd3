"""Refusals made before any route saw the request come in Anthropic's shape on /v1/messages paths.

The connection protocol writes some straight to the socket (too many or too large headers: 431; headers or a
body that arrive too slowly: 408) or answers them itself (every connection busy: 503); the app refuses others
while it reads the body (413, not JSON: 400) and at the end of the shutdown grace period (503, see
test_messages_protocol). A client of the Messages API reads each as `{"type": "error", "error": {…}}`; the same
refusal elsewhere keeps OpenAI's shape. Raw HTTP/1.1 against the real server, as in test_connection_limits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import httpx

from .test_connection_limits import PATIENCE_S, connect, read_until_closed, trickle

Start = Callable[..., AbstractContextManager[str]]
BODY = b'{"model": "fake/solo", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}'


def status_and_body(response: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split(b" ", 2)[1]), json.loads(body)


def anthropic(response: bytes, status: int, kind: str) -> str:
    """Assert Anthropic's error shape with this status and type; the message."""
    got, body = status_and_body(response)
    assert got == status and body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == kind, body
    return str(body["error"]["message"])


def openai(response: bytes, status: int) -> str:
    got, body = status_and_body(response)
    assert got == status and set(body) == {"error"} and body["error"]["code"], body
    return str(body["error"]["message"])


def post_head(path: bytes, *headers: bytes, length: int = len(BODY)) -> bytes:
    extra = b"".join(header + b"\r\n" for header in headers)
    return (b"POST " + path + b" HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n" % length + extra)  # fmt: skip


def refused(url: str, request: bytes) -> bytes:
    with connect(url) as sock:
        sock.sendall(request)
        return read_until_closed(sock)


def test_header_limits_answer_in_the_paths_shape(start_server: Start) -> None:
    fillers = [b"X-Filler-%d: x" % n for n in range(30)]
    with start_server(server={"max_headers": 20}) as url:
        too_many = refused(url, post_head(b"/v1/messages?beta=true", *fillers) + b"\r\n" + BODY)
        too_many_counted = refused(url, post_head(b"/api/v1/messages/count_tokens", *fillers) + b"\r\n" + BODY)
        too_large = refused(url, post_head(b"/v1/messages", b"Cookie: " + b"c" * 40_000) + b"\r\n" + BODY)
        elsewhere = refused(url, post_head(b"/v1/chat/completions", *fillers) + b"\r\n")

    assert "at most 20" in anthropic(too_many, 431, "invalid_request_error")
    anthropic(too_many_counted, 431, "invalid_request_error")
    assert "32768 bytes" in anthropic(too_large, 431, "invalid_request_error")
    assert "at most 20" in openai(elsewhere, 431)


def test_slow_headers_and_bodies_answer_in_the_paths_shape(start_server: Start) -> None:
    with start_server(server={"header_timeout_s": 1, "body_timeout_s": 1}) as url:
        with connect(url) as sock:
            sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: t\r\n")
            assert trickle(sock, b"X", every_s=0.2, for_s=PATIENCE_S), "the server waited for the headers forever"
            slow_headers = read_until_closed(sock)
        with connect(url) as sock:
            sock.sendall(post_head(b"/v1/messages", length=100_000) + b"\r\n{")
            assert trickle(sock, b" ", every_s=0.2, for_s=PATIENCE_S), "the server waited for the body forever"
            slow_body = read_until_closed(sock)
        with connect(url) as sock:
            sock.sendall(post_head(b"/v1/responses", length=100_000) + b"\r\n{")
            assert trickle(sock, b" ", every_s=0.2, for_s=PATIENCE_S)
            elsewhere = read_until_closed(sock)

    assert "headers" in anthropic(slow_headers, 408, "invalid_request_error")
    assert "body" in anthropic(slow_body, 408, "invalid_request_error")
    assert "body" in openai(elsewhere, 408)


def test_a_full_server_answers_in_the_paths_shape(start_server: Start) -> None:
    limits = {"max_connections": 2, "probe_connections": 2, "body_timeout_s": 30}
    with start_server(server=limits) as url, ExitStack() as stack:
        for _ in range(2):  # busy: headers sent, the body still to come
            stack.enter_context(connect(url)).sendall(post_head(b"/v1/chat/completions") + b"\r\n")
        time.sleep(0.3)
        messages = httpx.post(f"{url}/v1/messages", content=BODY, timeout=PATIENCE_S)
        elsewhere = httpx.post(f"{url}/v1/chat/completions", content=BODY, timeout=PATIENCE_S)

    # Anthropic's pair, 529 with overloaded_error (it documents no 503): the anthropic SDK's OverloadedError.
    assert messages.status_code == 529 and messages.headers["retry-after"] == "1"
    assert messages.json()["type"] == "error" and messages.json()["error"]["type"] == "overloaded_error"
    assert elsewhere.status_code == 503 and elsewhere.json()["error"]["code"] == "server_busy"


def test_oversized_and_malformed_bodies_answer_in_anthropics_shape(start_server: Start) -> None:
    with start_server(max_body_bytes=1024) as url:
        declared = refused(url, post_head(b"/v1/messages", length=4096) + b"Connection: close\r\n\r\n" + b" " * 4096)
        chunks = iter([BODY[:-1], b', "x": "' + b"y" * 2048 + b'"}'])  # chunked: no Content-Length to go by
        undeclared = httpx.post(f"{url}/v1/messages", content=chunks, headers={"content-type": "application/json"})
        not_json = refused(url, post_head(b"/v1/messages", b"Connection: close", length=5) + b"\r\n{nope")

    assert "too large" in anthropic(declared, 413, "request_too_large")
    assert undeclared.status_code == 413 and undeclared.json()["error"]["type"] == "request_too_large"
    assert "not valid JSON" in anthropic(not_json, 400, "invalid_request_error")
