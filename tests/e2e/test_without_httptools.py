"""Without httptools (a platform it has no wheel for), uvicorn serves with h11: the server says what that costs.

The `[server]` connection limits and the JSON errors for unreadable requests live in openfusion's httptools protocol;
under h11 they do not apply. That used to be silent. The real `openfusion serve` runs here with httptools made
unimportable (a package of that name on its PYTHONPATH that refuses to load).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.processes import provider_config, serve

pytestmark = pytest.mark.e2e


def _raw(url: str, request: bytes) -> bytes:
    """Send `request` as it is and read until the server closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def test_a_server_without_httptools_warns_that_its_connection_limits_do_not_apply(
    fake_upstream: Any, presets_dir: Path, tmp_path: Path
) -> None:
    blocked = tmp_path / "no-httptools" / "httptools"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text('raise ImportError("httptools is not available on this platform")\n')
    _, upstream_url = fake_upstream
    env = {"PYTHONPATH": str(blocked.parent)}
    with serve(provider_config(upstream_url), presets_dir, tmp_path / "server", env=env) as served:
        models = httpx.get(f"{served.url}/v1/models", timeout=30)
        # Served by h11: an unreadable request gets h11's plain-text refusal, not openfusion's JSON error (the fault).
        refused = _raw(served.url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: nonsense\r\n\r\n")
        log = served.log()

    assert models.status_code == 200
    head = refused.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 400") and b"application/json" not in head, refused
    warnings = [line["message"] for line in log if line["level"] == "warning" and "httptools" in line["message"]]
    assert len(warnings) == 1, log
    assert "without the [server] connection limits" in warnings[0] and "uvicorn[standard]" in warnings[0]
