"""A TCP proxy on loopback that can cut a "host" off from PostgreSQL, two ways:

* `blackhole()`: it stops forwarding but keeps every socket open and keeps accepting
  (a hung server or middlebox: the client's kernel sees its data acknowledged, so
  neither keepalives nor tcp_user_timeout fire);
* `reset()`: every connection is closed with RST and new ones are refused.

`heal()` forwards again (a black hole delivers what it held, as TCP retransmission
would).  Threads only: one accept loop, two pumps per connection."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class Proxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._open = threading.Event()  # forwarding (cleared: black hole)
        self._open.set()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._closed = False
        self._refusing = False  # reset() until heal(): no connection may live
        self._listener = self._listen(0)
        self.port = self._listener.getsockname()[1]

    def url(self, base: str) -> str:
        """`base` (a postgresql:// URL on 127.0.0.1:5432) through this proxy."""
        return base.replace("127.0.0.1:5432", f"127.0.0.1:{self.port}")

    def _listen(self, port: int) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()
        return s

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._refusing:  # accepted just as reset() began
                    _rst(client)
                    _rst(server)
                    continue
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self._closed:
            self._open.wait()
            try:
                data = src.recv(65536)
                if not data:
                    break
                self._open.wait()  # data read just as the cut began is held too
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def blackhole(self) -> None:
        self._open.clear()

    def reset(self) -> None:
        """RST every connection; refuse new ones until heal()."""
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            self._refusing = True
            conns, self._conns = self._conns, []
        for s in conns:
            _rst(s)

    def heal(self) -> None:
        with self._lock:
            self._refusing = False
        if self._listener.fileno() == -1:
            self._listener = self._listen(self.port)
        self._open.set()

    def close(self) -> None:
        self._closed = True
        self.reset()
        self._open.set()


def _rst(s: socket.socket) -> None:
    """Close `s` with RST.  A close() alone does not wake a pump thread blocked in
    recv() on it (the kernel keeps the socket while the call is in flight, so no RST
    is sent); shutdown() wakes it first."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
