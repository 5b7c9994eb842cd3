"""SIGTERM: stop accepting, let in-flight requests finish within the grace period, then cancel cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes.upstream import FakeUpstream, Script, wait_until

HI = [{"role": "user", "content": "Hi"}]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(upstream_url: str, presets_dir: Path, tmp_path: Path, *, grace_s: float) -> Iterator[tuple[str, Any]]:
    """`openfusion serve` as a real process; yields its URL and the process."""
    config = tmp_path / "openfusion.toml"
    config.write_text(
        f'default_preset = "trio"\nshutdown_grace_s = {grace_s}\n\n[[providers]]\nname = "fake"\n'
        f'base_url = "{upstream_url}/v1"\nmodels = ["fake/*"]\nstrip_prefix = true\n'
    )
    port = _free_port()
    command = [
        str(Path(sys.executable).parent / "openfusion"),
        "serve",
        "--port",
        str(port),
        "--config",
        str(config),
        "--presets",
        str(presets_dir),
        "--no-access-log",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
            assert process.poll() is None and time.monotonic() < deadline, "openfusion serve did not start"
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def _post_in_background(url: str, body: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["response"] = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
        except httpx.HTTPError as exc:
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_sigterm_lets_an_in_flight_request_finish(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    _, upstream_url = fake_upstream
    for model in "abc":
        upstream.script(model, Script(delay_s=1.0))

    with served(upstream_url, presets_dir, tmp_path, grace_s=10) as (url, process):
        thread, result = _post_in_background(url, {"model": "fusion", "messages": HI})
        wait_until(lambda: len(upstream.calls) == 3)
        process.send_signal(signal.SIGTERM)
        thread.join(15)
        assert result["response"].status_code == 200
        assert result["response"].json()["choices"][0]["message"]["content"] == "Answer from synth."
        # uvicorn re-raises the signal once it has shut down cleanly.
        assert process.wait(timeout=10) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(f"{url}/healthz", timeout=1)


def test_sigterm_cancels_what_outlives_the_grace_period(
    fake_upstream: Any, upstream: FakeUpstream, presets_dir: Path, tmp_path: Path
) -> None:
    _, upstream_url = fake_upstream
    for model in "abc":
        upstream.script(model, Script(delay_s=60))

    with served(upstream_url, presets_dir, tmp_path, grace_s=1) as (url, process):
        thread, _ = _post_in_background(url, {"model": "fusion", "stream": True, "messages": HI})
        wait_until(lambda: len(upstream.calls) == 3)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        stopped = time.monotonic() - sent
        thread.join(15)
    assert stopped < 10  # the grace period (1 s) bounds the stop, not the 60 s panelists
    wait_until(lambda: all(call.disconnected for call in upstream.calls))  # their calls were closed
