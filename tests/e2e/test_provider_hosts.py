"""A provider whose `base_url` host is beyond ASCII (an internationalised domain name), now that `openfusion serve`
makes each preset model's endpoint at start-up: it is called by its IDNA form, or, when the host has none, the start
is refused with one line naming the provider, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai

from fakes.upstream import FakeUpstream, Script

from .processes import HI, free_port, provider_config, serve

OPENFUSION = str(Path(sys.executable).parent / "openfusion")
IDN_HOST, IDNA_FORM = "bücher.example", "xn--bcher-kva.example"

# The server's `sitecustomize`: the IDNA form of the test's host resolves to loopback (no DNS a test machine asks
# knows it). Python's socket module only sees the lookups of an asyncio loop (uvloop makes its own in C), so the
# server's loops are asyncio ones: openfusion's code is the same on either.
_RESOLVED_TO_LOOPBACK = """
import asyncio, socket
import uvloop

_getaddrinfo = socket.getaddrinfo


def _loopback_for_the_test_host(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    return _getaddrinfo("127.0.0.1" if name == {host!r} else host, *args, **kwargs)


socket.getaddrinfo = _loopback_for_the_test_host
uvloop.new_event_loop = asyncio.SelectorEventLoop
"""


def test_a_provider_host_beyond_ascii_is_called_by_its_idna_form(
    fake_upstream: tuple[FakeUpstream, Any], upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    """`base_url = "http://bücher.example:PORT/v1"` serving the default preset's models: the server starts, and a call
    goes to the host's IDNA form (`Host: xn--bcher-kva.example:PORT`), as any HTTP client sends it."""
    _, upstream_url = fake_upstream
    port = upstream_url.rsplit(":", 1)[1]
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_RESOLVED_TO_LOOPBACK.format(host=IDNA_FORM))
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    upstream.script("a", Script(content="Hallo."))
    config = provider_config(f"http://{IDN_HOST}:{port}")
    with (
        serve(config, presets_dir, tmp_path / "server", env=env) as served,
        openai.OpenAI(base_url=f"{served.url}/v1", api_key="k", max_retries=0) as client,
    ):
        answer = client.chat.completions.create(model="fake/a", messages=HI)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "Hallo."
    [call] = upstream.calls
    assert call.headers["host"] == f"{IDNA_FORM}:{port}"


def test_a_provider_host_with_no_idna_form_stops_the_start_in_one_line(presets_dir: Path, tmp_path: Path) -> None:
    """A host no internationalised domain name can be (a snowman): `openfusion serve` exits 2 with one line naming
    the provider and the host, before anything listens, where the endpoint made at start-up failed with a traceback."""
    config = tmp_path / "openfusion.toml"
    config.write_text(provider_config("http://user:s3cret-token@☃.example/x"), encoding="utf-8")
    result = subprocess.run(
        [OPENFUSION, "serve", "--port", str(free_port()), "--config", str(config), "--presets", str(presets_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "openfusion: provider 'fake': the host of base_url, '☃.example', is not a valid internationalised domain name "
        "(IDNA 2008); write it as a valid one or in its ASCII form (xn--...)"
    ], result.stderr
    assert "s3cret-token" not in result.stderr + result.stdout  # the URL's credentials are never repeated
