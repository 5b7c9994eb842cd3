"""One worker process of several: the app built from the supervisor's settings, served on its socket."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from openfusion.settings import Settings
from openfusion.workers.serve import STARTUP_FAILURE, ServeOptions, run_app, settle_heap

log = logging.getLogger("openfusion")

# What a worker tells its supervisor once it serves.
READY = "ready"


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker is started with (pickled to it): the same settings in every worker."""

    settings: Settings
    options: ServeOptions
    metrics_dir: Path


def run_worker(spec: WorkerSpec, *, number: int, sock: socket.socket, channel: Connection) -> None:
    """The worker process's entry point: serve on `sock` until SIGTERM, or until the supervisor is gone."""
    from openfusion.app import create_app
    from openfusion.errors import ConfigError
    from openfusion.observability.logs import configure_logging

    configure_logging(level=spec.options.log_level, fmt=spec.options.log_format, worker=number)
    try:
        app = create_app(spec.settings, metrics_dir=spec.metrics_dir)
    except ConfigError as exc:  # the supervisor built the same app before starting workers: rare (the files changed)
        log.error("worker could not build the app: %s", exc.message)
        sys.exit(STARTUP_FAILURE)
    settle_heap()
    _stop_when_orphaned(channel)
    try:
        started = run_app(app, spec.settings, spec.options, sockets=[sock], on_started=lambda: channel.send(READY))
    except KeyboardInterrupt:  # uvicorn raises a captured SIGINT again once it has shut down
        started = True
    sys.exit(0 if started else STARTUP_FAILURE)


def _stop_when_orphaned(channel: Connection) -> None:
    """Shut down gracefully (as on SIGTERM) when the supervisor's end of `channel` closes: it exited or was killed."""

    def watch() -> None:
        try:
            while True:
                channel.recv()
        except (EOFError, OSError):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="openfusion-supervisor-watch", daemon=True).start()
