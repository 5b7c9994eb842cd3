"""A costly document cannot keep the server busy: text extraction is cut at its limit and dies with its request.

`openfusion serve` runs as its own process; a panelist fetches a 34 KB PDF whose text pypdf would need
minutes of CPU for. The server's process tree (the server, its fork server and extraction workers) is
watched through /proc: once the request has ended, nothing in it may keep burning CPU.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from e2e.processes import (
    IDLE_CPU_S,
    WINDOW_S,
    Served,
    alive,
    forked_by_fork_server,
    provider_config,
    serve,
    watch_cpu,
)
from fakes.server import serve_in_thread
from fakes.upstream import FakeUpstream, Script, wait_until, web_fetch_call
from web.pages import costly_pdf

pytestmark = pytest.mark.e2e

_SITE = Starlette(routes=[Route("/costly.pdf", lambda _: Response(costly_pdf(), media_type="application/pdf"))])


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with serve_in_thread(_SITE) as url:
        yield url


def _config(upstream_url: str, fetch: str) -> str:
    return provider_config(upstream_url, extra=f'[research.fetch]\nallow_private = ["127.0.0.0/8"]\n{fetch}\n')


def _ask(served: Served) -> httpx.Response:
    body = {"model": "fusion/trio", "messages": [{"role": "user", "content": "Summarise the report."}]}
    return httpx.post(f"{served.url}/v1/chat/completions", json=body, timeout=120)


def _tool_result(upstream: FakeUpstream) -> str:
    content: str = upstream.calls_for("a")[1].body["messages"][-1]["content"]
    return content


@pytest.mark.parametrize(
    ("fetch", "bound_s", "said"),
    [
        # The fetch's own time limit (which already existed) ends the extraction with the fetch.
        ("timeout_s = 3", 3, "the fetch timed out after 3 s: text extraction was cut off."),
        # The extraction's limit, well inside the fetch's.
        ("timeout_s = 60\nextract_timeout_s = 2", 2, "text extraction was cut off after 2 s: the PDF is too costly"),
    ],
)
def test_a_costly_pdf_is_cut_at_the_limit_and_leaves_nothing_running(
    fake_upstream: Any,
    upstream: FakeUpstream,
    presets_dir: Path,
    tmp_path: Path,
    site: str,
    fetch: str,
    bound_s: float,
    said: str,
) -> None:
    _, upstream_url = fake_upstream
    upstream.script(
        "a", Script(tool_calls=[web_fetch_call(f"{site}/costly.pdf")]), Script(content="The report could not be read.")
    )

    with serve(_config(upstream_url, fetch), presets_dir, tmp_path) as served:
        started = time.monotonic()
        response = _ask(served)
        elapsed = time.monotonic() - started
        _, spent = watch_cpu(served.process.pid)

    assert response.status_code == 200, response.text
    assert elapsed < bound_s + 5  # the limit, plus the fake panel, judge and synthesizer
    assert spent < IDLE_CPU_S, f"the server's processes spent {spent:.2f} s of CPU in {WINDOW_S} s after the request"
    result = _tool_result(upstream)
    assert result.startswith("web_fetch error") and said in result, result


def test_a_client_that_hangs_up_takes_its_extraction_with_it(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path, site: str
) -> None:
    _, upstream_url = fake_upstream
    upstream.script("a", Script(tool_calls=[web_fetch_call(f"{site}/costly.pdf")]), Script(content="unused"))
    # The fetch and the extraction may each take 300 s: only the client's leaving can end this one in the test's time.
    config = _config(upstream_url, "timeout_s = 300\nextract_timeout_s = 300")

    with serve(config, presets_dir, tmp_path) as served:
        body = orjson.dumps({"model": "fusion/trio", "messages": [{"role": "user", "content": "Summarise."}]})
        port = int(served.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body
            )
            wait_until(lambda: len(upstream.calls_for("a")) == 1, timeout=30)
            # The extraction is under way in a worker: the first one waits for the fork server to import the parsers,
            # which a loaded machine may take a while to do; a fresh worker spends next to nothing until its job.
            wait_until(lambda: _busy_workers(served), timeout=60)
            (worker,) = _busy_workers(served)
        # The client has hung up: its extraction's worker is killed (nothing else would end it for 300 s), and
        # nothing in the server's tree keeps burning CPU.
        wait_until(lambda: not alive(worker), timeout=30)
        _, spent = watch_cpu(served.process.pid)
        assert spent < IDLE_CPU_S, f"the server's processes spent {spent:.2f} s of CPU in {WINDOW_S} s after it"

    assert len(upstream.calls_for("a")) == 1  # the panelist never got to a second turn


def _busy_workers(served: Served) -> list[int]:
    """The server's extraction workers that have spent more CPU than an idle server does in WINDOW_S."""
    return [pid for pid, cpu in forked_by_fork_server(served.process.pid).items() if cpu > IDLE_CPU_S]
