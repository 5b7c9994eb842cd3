"""Run any ASGI app under a real uvicorn server in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

# Bounds a hang only: on a loaded machine a server's startup (its lifespan opening stores) can take well over 10 s.
_TIMEOUT_S = 60.0


@contextmanager
def serve_in_thread(
    app: Any, *, host: str = "127.0.0.1", http: Any = None, tls: tuple[str, str] | None = None
) -> Iterator[str]:
    """Serve `app` with uvicorn on a free port in a daemon thread and yield its base URL.

    `http` is uvicorn's connection protocol; by default openfusion's production one (coalesced
    writes, the `[server]` limits of the app's settings), with the same options `openfusion serve`
    passes, so every end-to-end test runs through it. A caller without openfusion installed (the
    container smoke test's host side) passes "auto". `tls` = (certificate file, key file) serves HTTPS.
    """
    options: dict[str, Any] = {"http": http}
    if http is None:
        from openfusion.api.server_protocol import uvicorn_options

        options = uvicorn_options(getattr(getattr(app, "state", None), "settings", None))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Binding port 0 ourselves and handing uvicorn the socket avoids a pick-then-bind race.
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    # A bounded graceful shutdown keeps join() from hanging on a stream a test left open.
    certificate, key = tls or (None, None)
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=2,
        **options,
        ssl_certfile=certificate,
        ssl_keyfile=key,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + _TIMEOUT_S
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn exited before startup (lifespan startup failed?)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start within {_TIMEOUT_S} s")
            time.sleep(0.01)
        url_host = f"[{host}]" if family == socket.AF_INET6 else host
        yield f"{'https' if tls else 'http'}://{url_host}:{port}"
    finally:
        server.should_exit = True
        thread.join(_TIMEOUT_S)
        sock.close()
        if thread.is_alive():
            raise RuntimeError(f"uvicorn did not stop within {_TIMEOUT_S} s")
