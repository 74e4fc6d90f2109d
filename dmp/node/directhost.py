"""The object host's end of the direct route (internal; see dmp.wire.direct).

    host I/O loop: listening socket readable --> accept --> one thread per
        connection: prove the key both ways (at most MAX_HANDSHAKES at once,
        HANDSHAKE_TIMEOUT_S each: a stranger cannot pile them up), then
        read ObjCall --> Host.call_direct --> write ObjReply, until EOF
        (dmp.wire.directcall: headers cached, no message objects per call)

As multiprocessing's manager serves each connection on a thread of its own,
a call costs one read and one write on the host's side and wakes no other
thread. Calls on the inline kinds run under the host's inline lock, in turn
with the manager's HostCalls, so an object never sees two calls at once. Only
what the manager could have passed through runs here: calls on the inline
kinds (dict, list, Namespace) that make no object and carry no proxy;
anything else is answered ``ObjStatus.REDIRECT`` unrun, and the client asks
through the manager.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from dmp.errors import ProtocolError
from dmp.wire import direct, directcall
from dmp.wire.protocol import ObjStatus

log = logging.getLogger("dmp.objhost")

# Key proofs in progress at once; connections beyond are closed at once.
MAX_HANDSHAKES = 16
# Authenticated connections served at once (one per client thread and host).
MAX_CONNECTIONS = 1024

# (oid, method, payload frames) of an ObjCall -> (ObjStatus, payload frames) of its ObjReply
Call = Callable[[Any, Any, list[Any]], tuple[ObjStatus, list[Any]]]


class DirectServer:
    """The listening socket of one object host and the threads serving its connections."""

    def __init__(self, key: bytes | None, call: Call) -> None:
        self.address = direct.new_address()
        self.listener = direct.listen(self.address)  # OSError: no direct route here
        self.key = key
        self.call = call
        self._proving = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self._serving = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = 0
        self.closed = False

    @property
    def fd(self) -> int:
        return self.listener.fileno()

    def accept(self) -> bool:
        """Take every waiting connection (the listening socket was readable); never blocks.
        False: out of file descriptors, stop polling the listener for a while (it stays readable)."""
        return direct.accept_waiting(self.listener, self._admit, self._serve, "dmp-host-direct")

    def _admit(self) -> bool:
        """A connection may be served (and prove its key) now; else it is closed."""
        if not self._serving.acquire(blocking=False):
            return False
        if not self._proving.acquire(blocking=False):
            self._serving.release()
            return False
        return True

    def _serve(self, sock: socket.socket) -> None:
        try:
            try:
                sock.setblocking(True)
                sock.settimeout(direct.HANDSHAKE_TIMEOUT_S)
                direct.serve_handshake(sock, self.key)
                sock.settimeout(None)
            except (OSError, direct.DirectError) as exc:
                self.refused += 1
                log.info("direct route: refused a connection: %s", exc)
                return
            finally:
                self._proving.release()
            self._answer(sock)
        finally:
            try:  # EOF for the client now, even if a forked child (a managed Pool's worker) holds a copy
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
            self._serving.release()

    def _answer(self, sock: socket.socket) -> None:
        """Answer each whole request in order until the client leaves or misbehaves."""
        calls = directcall.Calls(sock)
        call = self.call
        try:
            while not self.closed:
                got = calls.next()
                if got is None:
                    return
                ref, oid, method, frames = got
                status, out = call(oid, method, frames)
                calls.reply(ref, status, out)
        except (direct.DirectError, ProtocolError) as exc:
            log.warning("direct route: dropped a connection: %s", exc)
        except OSError:
            pass

    def close(self) -> None:
        self.closed = True
        self.listener.close()
