"""`openfusion local`: three llama.cpp servers with the bundled small model, and openfusion in front of them."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from openfusion.localdemo.config import write_config
from openfusion.localdemo.servers import LocalDemoError, running_servers
from openfusion.workers.count import workers_value
from openfusion.workers.serve import port_value

log = logging.getLogger("openfusion.local")


def add_local_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address openfusion listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=port_value, default=8000, help="port openfusion listens on (default 8000)")
    parser.add_argument(
        "--panel",
        type=int,
        default=3,
        choices=range(1, 9),
        metavar="N",
        help="number of llama.cpp servers, one per panelist (default 3)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where to write the generated config, preset, server logs and activity store, created if missing "
        "(default: a temporary directory, removed on exit unless --keep)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (config, logs, activity) on exit; a --workdir is always kept",
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="a GGUF model file to serve (default: the bundled SmolLM2-135M)"
    )
    parser.add_argument(
        "--workers",
        type=workers_value,
        default=None,
        metavar="N",
        help="openfusion worker processes, or 'auto': one per usable CPU (default: $OPENFUSION_WORKERS, else 1)",
    )


def run_local(args: argparse.Namespace) -> int:
    """Start the servers, write the config, serve fusion until interrupted, then stop everything."""
    from openfusion.errors import ConfigError
    from openfusion.observability.logs import configure_logging
    from openfusion.settings import load_settings
    from openfusion.workers.serve import ServeOptions, serve

    # A plain `kill` (SIGTERM) must stop the llama.cpp servers too: as an exception it unwinds through
    # `running_servers`; left to its default action (uvicorn re-raises it after its own shutdown) it
    # would end the process at once and leave them running.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    configure_logging(fmt="text")
    try:
        # Before minutes of starting servers, not after: the port, and an address beyond loopback without
        # client keys (the demo's config adds none: they can only come from the environment).
        check_port_free(args.host, args.port)
        _check_exposure(args.host)
        workdir, temporary = _workdir(args.workdir)
    except LocalDemoError as exc:
        print(f"openfusion local: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    except ConfigError as exc:
        print(f"openfusion local: {exc.message}", file=sys.stderr)  # noqa: T201
        return 2
    try:
        with running_servers(args.panel, log_dir=workdir, model=args.model) as servers:
            config, presets = write_config(servers, workdir)
            settings = load_settings(config, presets_dir=presets)
            print(  # noqa: T201 - the one thing a person starting this needs to read
                f"openfusion: {len(servers)} llama.cpp servers ready "
                f"({args.model.name if args.model else 'SmolLM2-135M: it shows the mechanics, its answers are weak'})."
                f" Config in {config}.\n"
                f"Try: curl http://{args.host}:{args.port}/v1/chat/completions -H 'Content-Type: application/json' "
                '-d \'{"model": "fusion", "messages": [{"role": "user", "content": "Name a primary '
                "colour.\"}]}'",
                file=sys.stderr,
            )
            options = ServeOptions(host=args.host, port=args.port, log_format="text")
            return serve(settings, options, workers=args.workers)
    except LocalDemoError as exc:
        print(f"openfusion local: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    except ConfigError as exc:
        print(f"openfusion local: {exc.message}", file=sys.stderr)  # noqa: T201
        return 2
    finally:
        if temporary and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif temporary:
            print(f"openfusion local: kept {workdir}", file=sys.stderr)  # noqa: T201


def _check_exposure(host: str) -> None:
    """Raise ConfigError where `openfusion serve` would: beyond loopback with no client keys, unless allowed."""
    from openfusion.access.config import AccessConfig
    from openfusion.access.keys import check_exposure, is_loopback, load_keys
    from openfusion.settings import load_settings

    if is_loopback(host):
        return
    settings = load_settings(None)
    keys = load_keys(AccessConfig.model_validate(settings, from_attributes=True), os.environ)
    check_exposure(host, keys, allow_open=settings.allow_open)


def check_port_free(host: str, port: int) -> None:
    """Raise LocalDemoError unless openfusion could listen on host:port now."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise LocalDemoError(f"--host {host}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            sock.bind(address)
        except OSError as exc:
            raise LocalDemoError(
                f"cannot listen on {host}:{port} ({exc.strerror}): another server is using it? Choose another "
                "with --port"
            ) from None


def _workdir(path: Path | None) -> tuple[Path, bool]:
    """The work directory, created when missing, and whether it is a temporary one of ours."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix="openfusion-local-")), True
    if path.exists() and not path.is_dir():
        raise LocalDemoError(f"--workdir {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalDemoError(f"--workdir {path} cannot be created: {exc.strerror}") from None
    return path, False


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
