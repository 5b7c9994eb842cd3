"""HTTPS through the pinned address: SNI and certificate checks use the host name, on both transports."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest
import trustme

from openfusion.upstream.transport import AiohttpTransport
from openfusion.upstream.web.config import FetchConfig
from openfusion.upstream.web.errors import FetchFailed
from openfusion.upstream.web.fetch import Fetcher, build_fetch_client
from web.local_site import FakeResolver

BODY = b"served over TLS"
LIMITS = httpx.Limits()


@dataclass
class TlsServer:
    """A one-response-per-connection HTTPS server on loopback that records SNI names and request heads."""

    port: int = 0
    sni: list[str | None] = field(default_factory=list)
    heads: list[bytes] = field(default_factory=list)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def serve_tls(ca: trustme.CA, *names: str) -> tuple[TlsServer, asyncio.Server]:
    record = TlsServer()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    context.sni_callback = lambda _sock, name, _ctx: record.sni.append(name)  # type: ignore[assignment,misc,func-returns-value]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            record.heads.append(await reader.readuntil(b"\r\n\r\n"))
            head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(BODY)}\r\n"
            head += "Connection: close\r\n\r\n"
            writer.write(head.encode() + BODY)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client gave up during the handshake (a certificate it rejected)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    record.port = server.sockets[0].getsockname()[1]
    return record, server


@pytest.fixture(params=["httpx", "aiohttp"])
async def trusting_client(request: pytest.FixtureRequest, ca: trustme.CA) -> AsyncIterator[httpx.AsyncClient]:
    """A fetch client that trusts the test CA (and nothing else)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    make: Callable[[], httpx.AsyncClient] = (
        (lambda: build_fetch_client(verify=context))
        if request.param == "httpx"
        else (lambda: httpx.AsyncClient(transport=AiohttpTransport(limits=LIMITS, verify=context), trust_env=False))
    )
    async with make() as client:
        yield client


def fetcher_for(client: httpx.AsyncClient) -> Fetcher:
    resolver = FakeResolver({"secure.test": ["127.0.0.1"]})
    return Fetcher(FetchConfig(allow_hosts=["secure.test"], timeout_s=5), http=client, resolver=resolver)


async def test_tls_uses_the_host_name_for_sni_and_verification(
    ca: trustme.CA, trusting_client: httpx.AsyncClient
) -> None:
    """The certificate names only secure.test, not 127.0.0.1: it verifies only if checked against the name."""
    record, server = await serve_tls(ca, "secure.test")
    async with server:
        page = await fetcher_for(trusting_client).fetch(f"https://secure.test:{record.port}/doc")
    assert page.text == BODY.decode()
    assert record.sni == ["secure.test"]
    assert f"host: secure.test:{record.port}".encode() in record.heads[0].lower()


async def test_a_certificate_for_another_name_is_rejected(ca: trustme.CA, trusting_client: httpx.AsyncClient) -> None:
    record, server = await serve_tls(ca, "other.test")
    async with server:
        with pytest.raises(FetchFailed, match=r"TLS certificate of secure\.test could not be verified"):
            await fetcher_for(trusting_client).fetch(f"https://secure.test:{record.port}/doc")
    assert record.heads == []  # no request was sent over the unverified connection
