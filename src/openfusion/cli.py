"""The `openfusion` command.

Only the standard library is imported here: the console script imports this module before `main` can catch a
Ctrl-C, so every other import (pydantic, the app, the subcommands) happens inside `main`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from openfusion import __version__

log = logging.getLogger("openfusion")


def _parser() -> argparse.ArgumentParser:
    from openfusion.evaluation.command import add_eval_arguments
    from openfusion.localdemo.command import add_local_arguments
    from openfusion.workers.count import workers_value
    from openfusion.workers.serve import port_value

    parser = argparse.ArgumentParser(prog="openfusion", description="OpenAI-compatible fusion proxy.")
    parser.add_argument("--version", action="version", version=f"openfusion {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=port_value, default=8000, help="port to listen on (default 8000)")
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
    serve.add_argument(
        "--workers",
        type=workers_value,
        default=None,
        metavar="N",
        help="worker processes on the one port, or 'auto': one per usable CPU (default: $OPENFUSION_WORKERS, else 1)",
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
    from openfusion.errors import ConfigError
    from openfusion.observability.logs import configure_logging
    from openfusion.settings import load_settings, misspelt_variables
    from openfusion.workers.serve import ServeOptions
    from openfusion.workers.serve import serve as serve_settings

    config = args.config or (Path(os.environ["OPENFUSION_CONFIG"]) if os.environ.get("OPENFUSION_CONFIG") else None)
    configure_logging(level=args.log_level, fmt=args.log_format)
    options = ServeOptions(
        host=args.host, port=args.port, log_level=args.log_level, log_format=args.log_format, access_log=args.access_log
    )
    try:
        settings = load_settings(config, presets_dir=args.presets)
        for variable, setting in misspelt_variables(os.environ):
            log.warning("%s is not a setting and is ignored: did you mean %s?", variable, setting)
        return serve_settings(settings, options, workers=args.workers)
    except ConfigError as exc:
        print(f"openfusion: {exc.message}", file=sys.stderr)  # noqa: T201
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `openfusion` console script."""
    try:
        args = _parser().parse_args(argv)  # imports the subcommands' modules: the first second of start-up
        if args.command == "serve":
            return serve(args)
        if args.command == "eval":
            from openfusion.evaluation.command import run_eval

            return run_eval(args)
        if args.command == "local":
            from openfusion.localdemo.command import run_local

            return run_local(args)
    except KeyboardInterrupt:  # Ctrl-C before the server handles it (importing, starting): a stop, not a crash
        print("openfusion: interrupted", file=sys.stderr)  # noqa: T201
        return 130
    return 1
