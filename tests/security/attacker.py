"""Tools of an attacker on the same network, for tests/security.

    RecordingProxy   a ROUTER that real peers connect to instead of the
                     manager; it forwards both ways (one DEALER per peer,
                     same identity) and keeps a copy of every message
    FakeManager      a keyless ROUTER that plays the manager: it sees
                     Hellos and sends whatever raw frames it is told to
    raw_dealer()     a keyless DEALER, optionally under a chosen identity

Each owns its sockets and thread and is closed by the test (a context
manager); nothing here has the key except what a test hands it.
"""

from __future__ import annotations

import threading
from typing import Any

import zmq

from dmp.wire import protocol
from tests.ports import free_port


def decode(parts: list[bytes]) -> protocol.Message | None:
    """The header of a raw [signature, header, ...] message, unchecked (None if garbage)."""
    try:
        return protocol.decode(parts[1])[0]
    except Exception:
        return None


class RecordingProxy:
    """peers -> ROUTER (ours) -> DEALER per peer identity -> the manager, and back."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.ctx = zmq.Context()
        self.to_manager: list[tuple[bytes, list[bytes]]] = []  # (peer identity, raw parts)
        self.to_peer: list[tuple[bytes, list[bytes]]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._front = self.ctx.socket(zmq.ROUTER)
        self._front.setsockopt(zmq.LINGER, 0)
        self._front.bind(self.address)
        self._thread = threading.Thread(target=self._run, name="recording-proxy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backs: dict[bytes, zmq.Socket[Any]] = {}
        owner: dict[zmq.Socket[Any], bytes] = {}
        poller = zmq.Poller()
        poller.register(self._front, zmq.POLLIN)
        try:
            while not self._stop:
                for sock, _ in poller.poll(50):
                    if sock is self._front:
                        ident, *parts = self._front.recv_multipart()
                        back = backs.get(ident)
                        if back is None:
                            back = self.ctx.socket(zmq.DEALER)
                            back.setsockopt(zmq.LINGER, 0)
                            back.setsockopt(zmq.ROUTING_ID, b"p" + ident)  # never a reserved zero-led id
                            back.connect(self.upstream)
                            backs[ident] = back
                            owner[back] = ident
                            poller.register(back, zmq.POLLIN)
                        with self._lock:
                            self.to_manager.append((ident, parts))
                        back.send_multipart(parts)
                    else:
                        parts = sock.recv_multipart()
                        with self._lock:
                            self.to_peer.append((owner[sock], parts))
                        try:
                            self._front.send_multipart([owner[sock], *parts])
                        except zmq.ZMQError:
                            pass
        finally:
            for back in backs.values():
                back.close()
            self._front.close()

    def sent_by(self, kind: type[protocol.Message], **match: Any) -> list[tuple[bytes, list[bytes]]]:
        """Captured peer -> manager messages of type ``kind`` whose fields match."""
        return _select(self.to_manager, self._lock, kind, match)

    def sent_to(self, kind: type[protocol.Message], **match: Any) -> list[tuple[bytes, list[bytes]]]:
        """Captured manager -> peer messages of type ``kind`` whose fields match."""
        return _select(self.to_peer, self._lock, kind, match)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.ctx.term()

    def __enter__(self) -> RecordingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _select(
    log: list[tuple[bytes, list[bytes]]], lock: threading.Lock, kind: type[protocol.Message], match: dict[str, Any]
) -> list[tuple[bytes, list[bytes]]]:
    with lock:
        items = list(log)
    out = []
    for ident, parts in items:
        msg = decode(parts)
        if isinstance(msg, kind) and all(getattr(msg, k) == v for k, v in match.items()):
            out.append((ident, parts))
    return out


class FakeManager:
    """A keyless manager impostor: a ROUTER the test reads and writes raw."""

    def __init__(self) -> None:
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.bind(self.address)

    def recv(self, timeout: float) -> tuple[bytes, list[bytes]] | None:
        """The next (identity, raw parts), or None after ``timeout`` seconds."""
        if not self.sock.poll(int(timeout * 1000)):
            return None
        ident, *parts = self.sock.recv_multipart()
        return ident, parts

    def wait_hello(self, timeout: float, role: str | None = None, ident: bytes | None = None) -> tuple[bytes, protocol.Hello]:
        """The next Hello (of ``role``, from ``ident``), skipping everything else.

        Raises:
            AssertionError: none within ``timeout`` (polled in short slices).
        """
        import time

        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            got = self.recv(min(left, 0.5))
            if got is None:
                continue
            msg = decode(got[1])
            if isinstance(msg, protocol.Hello) and (role is None or msg.role == role) and ident in (None, got[0]):
                return got[0], msg
        raise AssertionError(f"no Hello (role {role}) within {timeout} s")

    def send(self, ident: bytes, parts: list[bytes]) -> None:
        self.sock.send_multipart([ident, *parts])

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()

    def __enter__(self) -> FakeManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def raw_dealer(ctx: zmq.Context[Any], address: str, identity: bytes | None = None) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.connect(address)
    return sock
