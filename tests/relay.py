"""A recording TCP relay: a client talks to the manager through it, every byte it sends is kept.

    client --tcp--> Relay (127.0.0.1:port, threads pumping both ways) --tcp--> manager
    relay.sent(): everything clients sent toward the manager, raw (ZMTP frames and all)

Real sockets both ways; the relay only copies, so what it records is exactly what
crossed the wire. ``close()`` shuts every socket and joins every thread.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

# How long close() waits for each pump thread (they end when their sockets shut).
JOIN_S = 10.0


class Relay:
    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("tcp://").rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.address = f"tcp://127.0.0.1:{self._listener.getsockname()[1]}"
        self._sent = bytearray()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._start(self._accept)

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                down, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            up = socket.create_connection(self._upstream, timeout=10)
            up.settimeout(None)
            down.settimeout(None)
            with self._lock:
                self._socks += [down, up]
            self._start(self._pump, down, up, True)
            self._start(self._pump, up, down, False)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if record:
                    with self._lock:
                        self._sent += data
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def sent(self) -> bytes:
        with self._lock:
            return bytes(self._sent)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(JOIN_S)


@contextlib.contextmanager
def relay(upstream: str) -> Iterator[Relay]:
    r = Relay(upstream)
    try:
        yield r
    finally:
        r.close()
