"""The pieces of a gateway topology as local processes: nginx from docker/'s template, and a TCP link one can cut."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from e2e.processes import free_port

TEMPLATE = Path(__file__).resolve().parents[2] / "docker" / "nginx" / "openfusion.conf.template"
# The compose template's one line that names the replicas through DNS; replaced by their local addresses.
_REPLICA_LINE = "server openfusion-replica:8000 resolve;"
# Who served what: the replica nginx tried (several on a failover), its status, and what the client got.
_LOG_FORMAT = "'$request_method $request_uri $status upstream=$upstream_addr upstream_status=$upstream_status'"


def nginx_binary() -> str | None:
    """Debian's nginx (`apt-get install nginx`), if installed."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


def nginx_config(template: str, *, port: int, replicas: list[str], prefix: Path, source: str | None = None) -> str:
    """docker/'s server block, unchanged but for its listen port and its replicas, in a complete nginx.conf.

    `source`: the address nginx connects to the replicas from (`proxy_bind`), as its own container's address in
    compose; by default the kernel's choice, 127.0.0.1, which a replica trusts as a proxy by default.
    """
    lines = []
    for line in template.splitlines():
        stripped = line.strip()
        if stripped.startswith("resolver "):  # the replicas are fixed addresses here: nothing to resolve
            continue
        if stripped == _REPLICA_LINE:
            lines += [f"    server {replica};" for replica in replicas]
            continue
        if stripped == "listen 80;":
            line = f"    listen 127.0.0.1:{port};"
        lines.append(line)
        if stripped == "proxy_pass http://openfusion;" and source is not None:
            lines.append(f"        proxy_bind {source};")
    server = "\n".join(lines)
    assert server.count("    server 127.0.0.1:") == len(replicas) and f"listen 127.0.0.1:{port};" in server, (
        "docker/nginx/openfusion.conf.template changed shape: update tests/e2e/gateway.py"
    )
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx's workers would become `nobody`, who may not enter a private temporary directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'} info;\n"
        "events { worker_connections 1024; }\n"
        f"http {{\n    log_format upstreams {_LOG_FORMAT};\n    access_log {prefix / 'access.log'} upstreams;\n"
        f"{temp}\n{server}\n}}\n"
    )


@dataclass
class Nginx:
    url: str
    process: subprocess.Popen[bytes]
    prefix: Path

    def access_log(self) -> list[str]:
        return (self.prefix / "access.log").read_text().splitlines()

    def error_log(self) -> str:
        return (self.prefix / "error.log").read_text(errors="replace")


@contextmanager
def nginx(binary: str, replicas: list[str], prefix: Path, *, source: str | None = None) -> Iterator[Nginx]:
    """nginx in the foreground balancing over `replicas` (host:port), configured like docker/'s gateway (connecting
    from `source`, see `nginx_config`)."""
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(TEMPLATE.read_text(), port=port, replicas=replicas, prefix=prefix, source=source))
    with (prefix / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)],
            stdout=stderr, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    served = Nginx(f"http://127.0.0.1:{port}", process, prefix)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{served.url}/nginx-health", timeout=1).status_code == 200:
                    break
            assert process.poll() is None, f"nginx exited:\n{(prefix / 'stderr.log').read_text()}"
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
        yield served
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class Link:
    """A TCP forwarder on a local port to `target`; `cut()` drops it (refusing and resetting), `mend()` restores it.

    It stands between one replica and a shared PostgreSQL or Redis, to lose that service for this replica alone.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.mend()

    def mend(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._sockets |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
