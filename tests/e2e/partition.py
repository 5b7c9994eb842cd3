"""A TCP proxy on loopback that can be partitioned: both sides stay connected, no byte passes any more.

A network partition drops packets; it sends no RST and no FIN, so neither end learns that the other is
gone: the client's next query simply never gets an answer. `PartitionProxy` does the same between a
client and one server: once `partition()` is called it keeps every socket open, reads what either side
sends and throws it away (counting it), and accepts new connections without ever connecting them on.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from types import TracebackType


class PartitionProxy:
    """Forwards 127.0.0.1:`port` to `target` until `partition()`; then black-holes both directions."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._peers: dict[socket.socket, socket.socket | None] = {}  # None: a connection made after the partition
        self._partitioned = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name="partition-proxy", daemon=True)

    @property
    def dropped(self) -> int:
        """Bytes received since the partition and never forwarded."""
        with self._lock:
            return self._dropped

    def partition(self) -> None:
        """From now on nothing passes, in either direction; every socket stays open."""
        self._partitioned.set()

    def __enter__(self) -> PartitionProxy:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close everything: the server sees its clients go (and rolls back what they left open)."""
        self._stopping.set()
        self._thread.join(timeout=5)
        for sock in [*self._peers, self._listener]:
            sock.close()
        self._selector.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            for key, _ in self._selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                else:
                    self._relay(sock)

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError):
            client, _ = self._listener.accept()
            server = None if self._partitioned.is_set() else socket.create_connection(self._target, timeout=5)
            self._add(client, server)
            if server is not None:
                self._add(server, client)

    def _add(self, sock: socket.socket, peer: socket.socket | None) -> None:
        sock.setblocking(False)
        self._peers[sock] = peer
        self._selector.register(sock, selectors.EVENT_READ)

    def _relay(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        peer = self._peers.get(sock)
        if self._partitioned.is_set():
            with self._lock:
                self._dropped += len(data)
            if not data:  # this side closed: nothing tells the other side (no FIN crosses a partition)
                self._forget(sock)
            return
        if not data:
            self._forget(sock)
            if peer is not None:
                self._forget(peer)
            return
        if peer is not None:
            peer.setblocking(True)  # loopback, small messages: a blocking send is simplest and cannot stall long
            peer.sendall(data)
            peer.setblocking(False)

    def _forget(self, sock: socket.socket) -> None:
        self._peers.pop(sock, None)
        if sock.fileno() != -1:
            self._selector.unregister(sock)
            sock.close()


def through(proxy: PartitionProxy, url: str) -> str:
    """A database URL of the local PostgreSQL (127.0.0.1:5432), with the proxy in the place of the server."""
    assert "@127.0.0.1:5432/" in url, url
    return url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
