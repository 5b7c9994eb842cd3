"""A safety net for end-to-end tests: nothing connects or resolves a name beyond loopback, whatever the SSRF guard does.

The net patches Python's socket module, which sees only what goes through it. uvloop (the loop `openfusion serve`
and uvicorn pick by default) connects and resolves in C, past any such patch, so while the net is up every new
uvloop loop is an asyncio one: its connects are `socket.connect` calls and its name lookups `socket.getaddrinfo`
calls. openfusion's code is the same on either loop; the net stops what slips through, and records it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import pytest
import uvloop


def _loopback(host: Any) -> bool:
    try:
        return ipaddress.ip_address(str(host).split("%", 1)[0]).is_loopback
    except ValueError:
        return str(host) == "localhost"


class LoopbackNet:
    """The patched socket module's record of what it stopped: "connect HOST:PORT" or "resolve HOST"."""

    def __init__(self) -> None:
        self.blocked: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

        def connect(sock: socket.socket, address: Any) -> None:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
                self.blocked.append(f"connect {address[0]}:{address[1]}")
                raise ConnectionRefusedError(f"test safety net: no connection to {address[0]}")
            real_connect(sock, address)

        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if host is not None and not _loopback(host.decode() if isinstance(host, bytes) else host):
                self.blocked.append(f"resolve {host}")
                raise socket.gaierror(socket.EAI_NONAME, f"test safety net: {host} is not resolved")
            return real_getaddrinfo(host, *args, **kwargs)

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(uvloop, "new_event_loop", asyncio.SelectorEventLoop)
