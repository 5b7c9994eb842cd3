"""Hostile or broken requests against the real server: each gets a clear 400 (or is let go quietly), never a 500."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from fakes.upstream import FakeUpstream, wait_until

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]


class Capture(logging.Handler):
    """Every record of the loggers it is attached to."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_logs() -> Iterator[Capture]:
    """openfusion's and uvicorn's log records while the test runs."""
    capture = Capture()
    loggers = [logging.getLogger(name) for name in ("openfusion", "uvicorn.error")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(capture)
        logger.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(capture)
            logger.setLevel(level)


def test_a_client_that_aborts_its_upload_is_one_info_line(
    server: str, upstream: FakeUpstream, server_logs: Capture
) -> None:
    address = urlsplit(server)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: openfusion\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\n\r\n"
    )
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(head + b'{"model": "fusion/trio", "messages": [{"role": "user", "content": "')
    # The connection is closed with ~4,930 bytes still owed: the server sees the client leave mid-body.

    def aborted() -> list[logging.LogRecord]:
        return [r for r in server_logs.records if "while sending its body" in r.getMessage()]

    wait_until(lambda: bool(aborted()), timeout=10)
    assert httpx.get(f"{server}/healthz").status_code == 200  # the server goes on; later records have landed
    assert len(aborted()) == 1
    record = aborted()[0]
    assert record.levelno == logging.INFO and record.exc_info is None
    assert [r for r in server_logs.records if r.levelno >= logging.WARNING] == []
    assert upstream.calls == []
