"""The embedded daemon's end of local mode's worker pipes (see dmp.wire.pipechan).

    Supervisor.spawn --add(worker id, socket, pid)--> joined (any thread that forks)
    the reactor's next step: new pipes join its poll (dmp_server.waiting) beside the ROUTER and the
        sentinels, and their workers join the scheduler at once, on the Hello made here
    readable --> cut into messages --> handled as the same worker's messages over ZeroMQ
    routing._send_raw to a piped worker's identity --> written here, never blocking
        (what the socket will not take waits for POLLOUT)
    EOF (the worker died or exited) or garbage --> the pipe is closed; the
        worker's death itself comes through its sentinel, as before

No handshake: see dmp.wire.pipechan for why a socketpair made before the
fork needs none. Nor a Hello from the worker: its supervisor knows all a
Hello would say, and the daemon joins the worker on the one made here
(sending no Welcome: the worker's config has the daemon's message limit),
so the first Dispatch can be on the pipe before the worker is even running.
"""

from __future__ import annotations

import collections
import functools
import logging
import socket
from collections.abc import Callable
from typing import Any

import zmq

from dmp.errors import ProtocolError
from dmp.wire import direct, protocol
from dmp.wire.pipechan import READ_BYTES
from dmp_server.waiting import Poller

log = logging.getLogger("dmp.manager")

# At most this many reads of one pipe per turn of the reactor.
READS_PER_TURN = 64

POLLIN, POLLOUT = int(zmq.POLLIN), int(zmq.POLLOUT)

Handler = Callable[[bytes, protocol.Message, list[Any]], None]


class _Pipe:
    __slots__ = ("hello", "ident", "pending", "reader", "sock")

    def __init__(self, ident: bytes, sock: socket.socket, hello: protocol.Hello) -> None:
        self.ident = ident
        self.sock = sock
        self.hello = hello  # what the worker would have said: its daemon joins it on this
        self.reader = direct.Reader(kept=True)  # workers' results, for the caller
        self.pending = direct.Outbox()  # what the socket would not take yet


class WorkerPipes:
    """Owned by the reactor's thread, but for :meth:`add` (under the fork, before the worker says anything)."""

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message  # the daemon's limit, which a worker would learn from its Welcome
        self.by_ident: dict[bytes, _Pipe] = {}
        self.by_fd: dict[int, _Pipe] = {}
        self.joined: collections.deque[_Pipe] = collections.deque()
        # Parent ends of the pipes still open: a worker forked later closes its copies.
        self.parent_ends: list[socket.socket] = []

    def prepare(
        self, worker_id: str, max_tasks: int, sndbuf: int, node: str = "local"
    ) -> tuple[_Pipe, socket.socket]:
        """Before a fork: the pipe for worker ``worker_id`` (its identity) and the
        worker's end of it; ``sndbuf``: each end's send buffer, bytes."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for made in (ours, theirs):
            made.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        ours.setblocking(False)
        # No version: the worker runs this very code (read, the version would
        # import importlib.metadata into the pool's process, pages every fork copies).
        hello = protocol.Hello(role=protocol.Role.WORKER, name=worker_id, host=_host(), pid=0, node=node,
                               max_tasks=max_tasks)
        return _Pipe(worker_id.encode(), ours, hello), theirs

    def add(self, pipe: _Pipe, pid: int) -> None:
        """The worker of a prepared ``pipe`` was just forked as ``pid``: the daemon takes its pipe."""
        pipe.hello.pid = pid
        self.by_ident[pipe.ident] = pipe
        self.parent_ends.append(pipe.sock)
        self.joined.append(pipe)

    def watch(self, poller: Poller) -> list[tuple[bytes, protocol.Hello]]:
        """Poll the pipes added since; the (identity, Hello) of each, for the daemon to join."""
        hellos = []
        while self.joined:
            pipe = self.joined.popleft()
            if pipe.sock.fileno() >= 0:
                self.by_fd[pipe.sock.fileno()] = pipe
                poller.register(pipe.sock.fileno(), POLLIN)
                hellos.append((pipe.ident, pipe.hello))
        return hellos

    def serve(self, ready: dict[Any, int], poller: Poller, handle: Handler) -> None:
        """Read and write the pipes ``ready`` names."""
        by_fd = self.by_fd
        for fd, events in ready.items():
            pipe = by_fd.get(fd) if type(fd) is int else None
            if pipe is None:
                continue
            ok = True
            if events & POLLOUT:
                ok = self._flush(pipe, poller)
            if ok and events & POLLIN:
                ok = self._read(pipe, handle) >= 0
            if not ok:
                self._close(pipe, poller)

    def drain(self, worker_id: str, poller: Poller, handle: Handler) -> None:
        """The worker died: handle what it wrote before (its last results), then close its pipe."""
        pipe = self.by_ident.get(worker_id.encode())
        if pipe is None:
            return
        # Until nothing more waits: a process the worker forked may hold its end open.
        while pipe.sock.fileno() >= 0 and self._read(pipe, handle) > 0:
            pass
        self._close(pipe, poller)

    def send(
        self, ident: bytes, msg: protocol.Message, frames: list[Any], poller: Poller
    ) -> bool:
        """Write ``msg`` to the piped worker ``ident`` without blocking; False if it has no pipe."""
        pipe = self.by_ident.get(ident)
        if pipe is None:
            return False
        if pipe.sock.fileno() < 0:
            return True  # gone: dropped, as ZeroMQ drops a message to a dead peer
        buffers = direct.encode(msg, frames)
        if pipe.pending:  # behind what waits already, in order
            pipe.pending.add(buffers)
            return True
        if len(buffers) == 1:  # the usual small message: one send, nothing left over
            try:
                sent = pipe.sock.send(buffers[0])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(pipe, poller)
                return True
            if sent == len(buffers[0]):
                return True
            buffers = [memoryview(buffers[0])[sent:]]
        pipe.pending.add(buffers)
        if not pipe.pending.write(pipe.sock):
            self._close(pipe, poller)
        elif pipe.pending:
            poller.register(pipe.sock.fileno(), POLLIN | POLLOUT)
        return True

    def close(self) -> None:
        for pipe in self.by_ident.values():
            _shut(pipe.sock)
        self.by_ident.clear()
        self.by_fd.clear()
        self.parent_ends.clear()

    def _read(self, pipe: _Pipe, handle: Handler) -> int:
        """Handle what a few reads bring: 1, or 0 if nothing waited, -1 at EOF or on
        garbage (then the pipe is to close)."""
        got = False
        for _ in range(READS_PER_TURN):  # a large message in a few turns of the reactor, not one per read
            try:
                n = pipe.reader.recv_from(pipe.sock, READ_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except direct.DirectError as exc:
                log.warning("worker %s: %s; closing its pipe", pipe.ident.decode(errors="replace"), exc)
                return -1
            except OSError:
                return -1
            if not n:
                return -1
            got = True
            if n < READ_BYTES:
                break
        if not got:
            return 0
        try:
            while (whole := pipe.reader.next()) is not None:
                msg, frames = direct.decode(whole)
                handle(pipe.ident, msg, frames)
        except (direct.DirectError, ProtocolError) as exc:
            # Only our own worker writes here: it is broken. Closed, it sees EOF and exits.
            log.warning(
                "worker %s: bad message on its pipe (%s); closing it",
                pipe.ident.decode(errors="replace"),
                exc,
            )
            return -1
        return 1

    def _flush(self, pipe: _Pipe, poller: Poller) -> bool:
        """The socket takes more: write what waits; False if the pipe broke."""
        if not pipe.pending.write(pipe.sock):
            return False
        if not pipe.pending:
            poller.register(pipe.sock.fileno(), POLLIN)
        return True

    def _close(self, pipe: _Pipe, poller: Poller) -> None:
        fd = pipe.sock.fileno()
        if fd < 0:
            return
        if self.by_fd.pop(fd, None) is not None:
            poller.unregister(fd)
        self.by_ident.pop(pipe.ident, None)
        try:
            self.parent_ends.remove(pipe.sock)
        except ValueError:
            pass
        _shut(pipe.sock)


@functools.cache
def _host() -> str:
    """This machine's name, as a worker's own Hello would give it."""
    return socket.gethostname()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
