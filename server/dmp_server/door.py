"""The manager's end of the direct route for the reactor kinds (Queue, Lock, Event, ...).

    reactor: listening socket readable --> accept --> a short-lived thread
        proves the key both ways (dmp.wire.direct) and reads the peer id the
        client was given in its Welcome --> the connection joins the reactor's poll
    connection readable (reactor thread) --> ObjCall / ObjCancel handled as
        if they came from that peer over ZeroMQ (its holds, its locks)
    an ObjReply to a request that came through a door connection goes back
        on it (in order); once that connection is gone, through the peer's
        ZeroMQ session, where the client undoes what it gave up on

The door only carries calls: objects are created and released, and peers
join and leave, through ZeroMQ. A call for a peer the manager does not know
(not joined yet, or gone) is answered ``REDIRECT`` unrun, and an
``ObjCancel`` is acknowledged with an ``ObjReply`` of ref 0 once handled, so
the client knows no reply to the cancelled call can follow.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

from dmp.errors import ProtocolError
from dmp.wire import direct, protocol
from dmp.wire.protocol import ObjStatus
from dmp_server.waiting import Poller

log = logging.getLogger("dmp.manager")

# Plain ints: zmq's flag enums cost an enum operation per test.
POLLIN, POLLOUT = int(zmq.POLLIN), int(zmq.POLLOUT)
MAX_HANDSHAKES = 16
MAX_CONNECTIONS = 4096
# A connection whose client stops reading is dropped once this much waits unsent.
MAX_PENDING_BYTES = 64 << 20


class DoorConn:
    __slots__ = ("peer", "pending", "reader", "sock")

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.reader = direct.Reader()
        self.pending = direct.Outbox()  # what the socket would not take yet


class Door:
    """Owned by the reactor thread, except the key-proof threads (which only hand over sockets)."""

    def __init__(self, key: bytes | None, poke: Callable[[], None]) -> None:
        self.address = direct.new_address()
        self.listener = direct.listen(self.address)  # OSError: no direct route here
        self._fd = self.listener.fileno()
        self.key = key
        self.poke = poke
        self.conns: dict[int, DoorConn] = {}
        self.routes: dict[tuple[str, int], DoorConn] = {}  # (peer, ref) -> where its reply goes
        self.joined: collections.deque[tuple[socket.socket, str]] = collections.deque()
        self._proving = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self.paused_at = 0.0  # the listener was set aside then (out of fds); 0: it is polled

    @property
    def fd(self) -> int:
        return self._fd

    # --- the reactor thread --------------------------------------------------------------

    def serve(
        self,
        ready: dict[Any, int],
        poller: Poller,
        known: Callable[[str], bool],
        handle: Callable[[str, protocol.Message, list[Any]], None],
        call: FastCall | None = None,
    ) -> None:
        """Accept, admit proven connections, read requests, write what waits."""
        if self.paused_at and time.monotonic() - self.paused_at >= 1.0:
            poller.register(self.fd, POLLIN)  # out of fds a second ago: try again
            self.paused_at = 0.0
        if not self.paused_at and self.fd in ready and not self._accept():
            poller.unregister(self.fd)  # it stays readable: polling it now would spin
            self.paused_at = time.monotonic()
        while self.joined:
            sock, peer = self.joined.popleft()
            self.conns[sock.fileno()] = DoorConn(sock, peer)
            poller.register(sock.fileno(), POLLIN)
            poller.prewake(sock.fileno())  # awake when the next call comes (dmp_server.waiting)
        for fd, events in ready.items():
            conn = self.conns.get(fd) if type(fd) is int else None
            if conn is None:
                continue
            ok = True
            if events & POLLOUT:
                ok = self._flush(conn, poller)
            if ok and events & POLLIN:
                ok = self._read(conn, poller, known, handle, call)
            if not ok:
                self._close(conn, poller)

    def reply(
        self, conn: DoorConn, msg: protocol.Message, frames: list[Any], poller: Poller
    ) -> None:
        """Write a reply on ``conn`` without blocking (the rest waits for POLLOUT)."""
        self._write(conn, direct.encode(msg, frames), poller)

    def reply_ok(
        self, conn: DoorConn, ref: int, value: Any, frames: list[Any], poller: Poller
    ) -> None:
        """``reply`` of ``ObjReply(ref, OK, value)``, its header made here (trailing
        defaults left off, as the protocol allows); one send when the socket takes it."""
        head = (
            [_VERSION, _OBJREPLY, [], ref, 0]
            if value is None
            else [_VERSION, _OBJREPLY, [], ref, 0, value]
        )
        if not frames:
            header = _packb(head)
            data: bytes | memoryview = _PREFIX.pack(len(header), 0) + header
        elif len(frames) == 1 and type(frames[0]) is bytes and len(frames[0]) < direct.JOIN_BELOW:
            item = frames[0]
            head[2] = [len(item)]
            header = _packb(head)
            data = _PREFIX.pack(len(header), len(item)) + header + item
        else:
            head[2] = sizes = [f.nbytes if type(f) is memoryview else len(f) for f in frames]
            self._write(conn, direct.frame(_packb(head), frames, sizes), poller)
            return
        self._write(conn, [data], poller)

    def _write(self, conn: DoorConn, buffers: list[Any], poller: Poller) -> None:
        sock = conn.sock
        if sock.fileno() < 0:
            return
        waiting = bool(conn.pending.views)  # (its deque: Outbox.__bool__ would be a Python call)
        if not waiting and len(buffers) == 1:  # the usual reply: one send, no outbox
            data = buffers[0]
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn, poller)
                return
            if sent == len(data):
                return
            buffers = [memoryview(data)[sent:]]
        conn.pending.add(buffers)
        if not waiting:
            if not conn.pending.write(conn.sock):
                self._close(conn, poller)
                return
            if conn.pending:
                poller.register(conn.sock.fileno(), POLLIN | POLLOUT)
        if conn.pending.nbytes > MAX_PENDING_BYTES:
            log.warning(
                "direct route: a client stopped reading its replies; dropping its connection"
            )
            self._close(conn, poller)

    def _accept(self) -> bool:
        """Take every waiting connection; False when out of file descriptors."""
        return direct.accept_waiting(
            self.listener,
            lambda: len(self.conns) < MAX_CONNECTIONS and self._proving.acquire(blocking=False),
            self._prove,
            "dmp-door-proof",
        )

    def _prove(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(direct.HANDSHAKE_TIMEOUT_S)
            direct.serve_handshake(sock, self.key)
            peer = direct.read_claim(sock)
            sock.setblocking(False)
        except (OSError, direct.DirectError, ValueError) as exc:
            log.info("direct route: refused a connection: %s", exc)
            sock.close()
            return
        finally:
            self._proving.release()
        self.joined.append((sock, peer))
        self.poke()

    def _read(
        self,
        conn: DoorConn,
        poller: Poller,
        known: Callable[[str], bool],
        handle: Callable[[str, protocol.Message, list[Any]], None],
        call: FastCall | None = None,
    ) -> bool:
        try:
            chunk = conn.sock.recv(1 << 18)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not chunk:
            return False
        try:
            if call is not None and not conn.reader.buf and call(conn, chunk):
                return conn.sock.fileno() >= 0
        except Exception as exc:  # one bad client must never stop the reactor
            log.warning("direct route: dropped a connection after a bad request: %r", exc)
            return False
        conn.reader.feed(chunk)
        try:
            while (whole := conn.reader.next()) is not None:
                msg, frames = direct.decode(whole)
                if isinstance(msg, protocol.ObjCall):
                    if not known(conn.peer):
                        self.reply(conn, protocol.ObjReply(msg.ref, ObjStatus.REDIRECT), [], poller)
                        continue
                    self.routes[(conn.peer, msg.ref)] = conn
                    handle(
                        conn.peer, msg, [bytes(f) for f in frames]
                    )  # the reactor may keep them (parked)
                elif isinstance(msg, protocol.ObjCancel):
                    if known(conn.peer):
                        handle(conn.peer, msg, [])
                    self.reply(conn, protocol.ObjReply(0, ObjStatus.OK), [], poller)
                else:
                    raise direct.DirectError(
                        f"only ObjCall and ObjCancel go through the door, not {type(msg).__name__}"
                    )
        except (direct.DirectError, ProtocolError) as exc:
            log.warning("direct route: dropped a connection: %s", exc)
            return False
        except Exception as exc:  # one bad client must never stop the reactor
            log.warning("direct route: dropped a connection after a bad request: %r", exc)
            return False
        return conn.sock.fileno() >= 0

    def _flush(self, conn: DoorConn, poller: Poller) -> bool:
        if not conn.pending.write(conn.sock):
            return False
        if not conn.pending:
            poller.register(conn.sock.fileno(), POLLIN)
        return True

    def _close(self, conn: DoorConn, poller: Poller) -> None:
        fd = conn.sock.fileno()
        if fd < 0:
            return
        poller.unregister(fd)
        self.conns.pop(fd, None)
        _shut(conn.sock)
        # Replies still due go through the peer's ZeroMQ session from now on.
        for key in [k for k, c in self.routes.items() if c is conn]:
            del self.routes[key]

    def close(self) -> None:
        for conn in self.conns.values():
            _shut(conn.sock)
        self.conns.clear()
        self.routes.clear()
        self.listener.close()


# The reactor's short path (dmp_server.doorcall): the connection and one read holding
# exactly one message; False when it does not take it (the usual decoding then runs).
FastCall = Callable[[DoorConn, bytes], bool]
_PREFIX = direct.PREFIX_STRUCT
_VERSION = protocol.PROTOCOL_VERSION
_OBJREPLY = protocol.ObjReply.TYPE
_packb = msgpack.packb


def _shut(sock: socket.socket) -> None:
    """Close for good: a process forked meanwhile (the object host) may hold a copy of the
    descriptor, and the client must see EOF now, not when that copy goes."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
