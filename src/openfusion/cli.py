"""The `openfusion` command."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from openfusion import __version__
from openfusion.errors import ConfigError
from openfusion.evaluation.command import add_eval_arguments, run_eval
from openfusion.localdemo.command import add_local_arguments, run_local


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openfusion", description="OpenAI-compatible fusion proxy.")
    parser.add_argument("--version", action="version", version=f"openfusion {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--config", type=Path, default=None, help="TOML config file (default: $OPENFUSION_CONFIG)")
    serve.add_argument("--presets", type=Path, default=None, help="directory of extra or overriding preset files")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--log-format", default="json", choices=["json", "text"], help="log lines as JSON (default) or plain text"
    )
    serve.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also log uvicorn's access lines (openfusion logs one 'request finished' line per request anyway)",
    )
    evaluate = commands.add_parser(
        "eval",
        help="grade models on DRACO-format tasks through a running openfusion",
        description="Answer DRACO-format tasks with each model through a running openfusion, grade every rubric "
        "criterion with a grader model, and write report.md and a score-vs-cost chart.",
    )
    add_eval_arguments(evaluate)
    local = commands.add_parser(
        "local",
        help="try fusion without keys: llama.cpp servers with a bundled 135M model, and openfusion in front",
    )
    add_local_arguments(local)
    return parser


def serve(args: argparse.Namespace) -> int:
    from openfusion.access.keys import warn_if_open
    from openfusion.api.server_limits import raise_open_file_limit
    from openfusion.api.server_protocol import uvicorn_options
    from openfusion.api.shutdown import run_server
    from openfusion.app import create_app
    from openfusion.observability.logs import configure_logging
    from openfusion.settings import load_settings

    config = args.config or (Path(os.environ["OPENFUSION_CONFIG"]) if os.environ.get("OPENFUSION_CONFIG") else None)
    log_config = configure_logging(level=args.log_level, fmt=args.log_format)
    try:
        settings = load_settings(config, presets_dir=args.presets)
        app = create_app(settings)
    except ConfigError as exc:
        print(f"openfusion: {exc.message}", file=sys.stderr)  # noqa: T201
        return 2
    warn_if_open(args.host, app.state.access.keys)
    settle_heap()
    raise_open_file_limit()  # idle connections each hold a descriptor: 1,024 is too few for a gateway
    started = run_server(
        app,
        drain=app.state.drain,
        grace_s=settings.shutdown_grace_s,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_config=log_config,
        access_log=args.access_log,
        **uvicorn_options(settings),
    )
    return 0 if started else 3  # uvicorn's exit status for a failed start


def settle_heap() -> None:
    """Tune the garbage collector for a long-running server, once start-up is done.

    Everything start-up built (modules, schemas, the app) lives as long as the process: frozen, no later
    collection walks it again. Young collections run a tenth as often: a request allocates thousands
    of short-lived objects, and collecting every 700 allocations cost ~10% of a fusion request's CPU.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(7000, 20, 20)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `openfusion` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "eval":
        return run_eval(args)
    if args.command == "local":
        return run_local(args)
    return 1
