"""aiohttp hands a request's head and body to the transport as they are (see `upstream/vectored_writes.py`)."""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path

import httpx
import orjson
import pytest
import trustme
import uvloop
from aiohttp import http_writer
from multidict import CIMultiDict

from component.support import JOINS_ON_ITS_OWN, record_upstream_writes
from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream
from openfusion.upstream.transport import AiohttpTransport, read_body
from openfusion.upstream.vectored_writes import use_vectored_writes


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="aiohttp's own choice from Python 3.12 on")
def test_aiohttp_writes_a_request_through_writelines_once_switched() -> None:
    """Fails if a new aiohttp moves or renames the switch: requests of 2 KiB or more would be copied whole again."""
    assert use_vectored_writes() is True
    assert http_writer.SKIP_WRITELINES is False


def test_without_the_switch_aiohttps_own_writes_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(http_writer, "SKIP_WRITELINES")
    assert use_vectored_writes() is False
    assert not hasattr(http_writer, "SKIP_WRITELINES")


@JOINS_ON_ITS_OWN
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_long_request_arrives_whole_through_uvloops_writelines(
    tls: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 300 KB body goes out through uvloop's `writelines` (with its head, as two buffers) over plain TCP and TLS,
    and arrives as sent."""
    fake, ca = FakeUpstream(), trustme.CA()
    certificate = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.cert_chain_pems[0].write_to_path(str(cert_file))
    certificate.private_key_pem.write_to_path(str(key_file))
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    body = {"model": "m", "messages": [{"role": "user", "content": "é 漢 " + "x" * 300_000}]}
    content = orjson.dumps(body)

    async def send(url: str) -> int:
        transport = AiohttpTransport(limits=httpx.Limits(max_connections=4), verify=trusted)
        try:
            headers = CIMultiDict({"Host": url.split("//")[1], "Content-Type": "application/json"})
            headers["Content-Length"] = str(len(content))
            reply = await transport.post(httpx.URL(f"{url}/v1/chat/completions"), headers, content, {"read": 30.0})
            await read_body(reply)
            await reply.aclose()
            return reply.status_code
        finally:
            await transport.aclose()

    writes = record_upstream_writes(monkeypatch)
    tls_files = (str(cert_file), str(key_file)) if tls else None
    with serve_in_thread(fake.app, tls=tls_files) as url, asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(send(url)) == 200
    assert [len(write) for write in writes] == [2]  # one write: the head and the body, as they are
    [call] = fake.calls_for("m")
    assert call.body == body
