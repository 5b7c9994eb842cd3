"""`openfusion local`: three llama.cpp servers with the bundled small model, and openfusion in front of them."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
from pathlib import Path

from openfusion.localdemo.config import write_config
from openfusion.localdemo.servers import LocalModelUnavailable, running_servers
from openfusion.workers.count import workers_value

log = logging.getLogger("openfusion.local")


def add_local_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address openfusion listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port openfusion listens on (default 8000)")
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
        help="where to write the generated config, preset and server logs (default: a temp dir)",
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
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="openfusion-local-"))
    try:
        with running_servers(args.panel, log_dir=workdir) as servers:
            config, presets = write_config(servers, workdir)
            settings = load_settings(config, presets_dir=presets)
            print(  # noqa: T201 - the one thing a person starting this needs to read
                f"openfusion: {len(servers)} llama.cpp servers ready (SmolLM2-135M: it shows the mechanics, "
                f"its answers are weak). Config in {config}.\n"
                f"Try: curl http://{args.host}:{args.port}/v1/chat/completions -H 'Content-Type: application/json' "
                '-d \'{"model": "fusion", "messages": [{"role": "user", "content": "Name a primary '
                "colour.\"}]}'",
                file=sys.stderr,
            )
            options = ServeOptions(host=args.host, port=args.port, log_format="text")
            return serve(settings, options, workers=args.workers)
    except LocalModelUnavailable as exc:
        print(f"openfusion local: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    except ConfigError as exc:
        print(f"openfusion local: {exc.message}", file=sys.stderr)  # noqa: T201
        return 2


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
