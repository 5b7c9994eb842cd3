"""Serving the app: in this process (one worker), or in N worker processes under a supervisor."""

from __future__ import annotations

import argparse
import gc
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from openfusion.settings import Settings

# The address is taken: nothing started.
CANNOT_LISTEN = 1
# uvicorn's exit status for a server that could not start.
STARTUP_FAILURE = 3
# `serve --workers`: a worker still running past the shutdown's grace period (and its backstop) was killed.
SHUTDOWN_OVERRUN = 4
# `serve --workers`: the workers kept dying (`worker_restart_limit` each within `worker_restart_window_s`).
WORKERS_DYING = 5


def port_value(text: str) -> int:
    """`--port`: 0 (any free port) to 65535; a larger number would not be refused but wrap around (70000: 4464)."""
    if text.isdigit() and int(text) <= 65535:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, not {text!r}")


@dataclass(frozen=True)
class ServeOptions:
    """How the server listens and logs (`openfusion serve`'s command-line options)."""

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    log_format: str = "json"
    access_log: bool = False


def serve(
    settings: Settings,
    options: ServeOptions,
    *,
    workers: int | Literal["auto"] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT/SIGHUP; the exit status (1: the address is taken, found before the app starts).
    `workers` overrides `settings.workers`.

    Raises ConfigError (before anything listens) when the settings, or the number of workers, are wrong, or
    when it would listen beyond loopback with no client keys and `allow_open` is not set.
    """
    from openfusion.access.config import AccessConfig
    from openfusion.access.keys import check_exposure
    from openfusion.api.server_limits import raise_open_file_limit
    from openfusion.app import create_app
    from openfusion.workers.count import resolve_workers

    environ = os.environ if environ is None else environ
    access = AccessConfig.model_validate(settings, from_attributes=True)
    count = resolve_workers(workers or settings.workers, access=access, environ=environ)
    app = create_app(settings, environ=environ)  # every configuration error surfaces here, in one worker or many
    check_exposure(options.host, app.state.access.keys, allow_open=settings.allow_open)
    raise_open_file_limit()  # idle connections each hold a descriptor: 1,024 is too few for a gateway
    from openfusion.workers.supervisor import Supervisor, address_free

    if not address_free(options):  # before the app starts (stores opened, migrations run) only to find it taken
        return CANNOT_LISTEN
    if count == 1:
        settle_heap()
        return 0 if run_app(app, settings, options) else STARTUP_FAILURE
    del app  # each worker builds its own
    return Supervisor(settings, options, count=count).run()


def run_app(
    app: Any,
    settings: Settings,
    options: ServeOptions,
    *,
    sockets: list[socket.socket] | None = None,
    on_started: Callable[[], None] | None = None,
) -> bool:
    """Run one uvicorn server for `app` with openfusion's connection protocol and grace period; False: no start."""
    from openfusion.api import shutdown
    from openfusion.api.server_protocol import uvicorn_options
    from openfusion.observability.logs import uvicorn_log_config

    return shutdown.run_server(
        app,
        drain=app.state.drain,
        grace_s=settings.shutdown_grace_s,
        sockets=sockets,
        on_started=on_started,
        host=options.host,
        port=options.port,
        log_level=options.log_level,
        log_config=uvicorn_log_config(options.log_level),
        access_log=options.access_log,
        **uvicorn_options(settings),
    )


YOUNG_THRESHOLD = 100_000  # see settle_heap


def settle_heap() -> None:
    """Tune the garbage collector for a long-running server, once start-up is done.

    Everything start-up built (modules, schemas, the app) lives as long as the process: frozen, no later
    collection walks it again. A young collection runs once the objects the collector tracks have grown by
    `YOUNG_THRESHOLD` since the last one. The requests in flight hold tens of thousands of them (~600 per
    streamed fusion), all freed by reference counting when their request ends (a test keeps it so): with a
    lower threshold the load alone starts collection after collection that walk live objects and find no
    garbage (7,000: ~14 a second at c=50, 7–10% of the CPU).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 20, 20)
