"""Local mode's worker pipes: a unix socketpair between the embedded daemon and a worker it forked.

    LocalEngine's Supervisor.spawn: socket.socketpair() --fork--> worker keeps one end
    worker (WorkerPipe) --[Hello, TaskDone, Bye...]--> daemon's reactor (dmp_server.workerpipes)
    worker <--[Welcome, Dispatch, ForgetJobs, Bye...]-- daemon

The messages are the protocol's own (``protocol.encode`` headers and
payload frames), framed as on the direct route (``dmp.wire.direct``:
``<u32 header length> <u64 payload length> header frames...``). One hop
each way between two processes, where the ZeroMQ route crosses four
threads (each side's I/O thread too).

No handshake and no signatures: the pair is created by the pool's process
before the fork, and each end exists only in those two processes (the
parent closes the worker's end once forked; the worker closes every parent
end it inherited; both are close-on-exec). Nobody else can write to it, so
there is nothing to prove, replay or inject. Only unkeyed local mode uses
it; spawn and forkserver workers (a fresh interpreter, nothing inherited
by fork) keep the ZeroMQ route. The manager closing its end is EOF here, a
``Bye``; the worker's death is EOF there, besides its supervisor's reaping.
"""

from __future__ import annotations

import collections
import select
import socket
from collections.abc import Sequence
from typing import Any

from dmp.errors import ProtocolError
from dmp.wire import direct, protocol

READ_BYTES = 1 << 18


class WorkerPipe:
    """The worker's end: the subset of Channel and PeerLoop that dmp.node.worker uses.

    Blocking writes (the daemon always reads); reads never block: what one
    ``recv`` brings is cut into messages kept in order here.
    """

    __slots__ = ("_poll", "eof", "hello", "inbox", "reader", "sock")

    def __init__(self, sock: socket.socket, hello: protocol.Hello) -> None:
        sock.setblocking(True)
        self.sock = sock
        self.hello = hello
        self.reader = direct.Reader()
        self.inbox: collections.deque[tuple[protocol.Message, list[Any]]] = collections.deque()
        self.eof = False
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    # --- Channel --------------------------------------------------------------------------

    @property
    def chan(self) -> WorkerPipe:
        return self

    def send(self, msg: protocol.Message, frames: Sequence[Any] = (), **_: Any) -> None:
        """Send ``msg``; a closed pipe (the manager is gone) drops it, as ZeroMQ would."""
        if isinstance(msg, protocol.Hello) and not msg.version:
            msg.version = protocol.software_version()
        try:
            direct.send(self.sock, direct.encode(msg, frames))
        except OSError:
            self._end("the pool's manager closed the pipe")

    def readable(self) -> bool:
        """True if a message (or the end of the pipe) waits."""
        if self.inbox:
            return True
        if self.eof:
            return False
        return bool(self._poll.poll(0))

    def close(self) -> None:
        self.sock.close()

    # --- PeerLoop -------------------------------------------------------------------------

    def say_hello(self) -> None:
        self.send(self.hello)

    def poll(self, limit: float | None = None) -> set[int]:
        """Wait up to ``limit`` seconds for a message; {-1} (the socket) if one waits."""
        if self.inbox:
            return {-1}
        if self.eof:
            return set()
        timeout = -1 if limit is None else int(max(0.0, limit) * 1000) + 1
        return {-1} if self._poll.poll(timeout) else set()

    def receive(self) -> tuple[protocol.Message, list[Any]] | None:
        """The next message, or None if none is whole yet. EOF arrives once, as a Bye."""
        if not self.inbox and not self.eof:
            self._read()
        if self.inbox:
            return self.inbox.popleft()
        return None

    def tick(self) -> None:
        """Nothing is timed on a pipe: no heartbeats, no re-Hello."""

    def _read(self) -> None:
        try:
            n = self.reader.recv_from(self.sock, READ_BYTES, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except direct.DirectError as exc:
            self._end(f"bad message on the worker pipe: {exc}")
            return
        except OSError:
            n = 0
        if not n:
            self._end("the pool's manager closed the pipe")
            return
        try:
            while (whole := self.reader.next()) is not None:
                self.inbox.append(direct.decode(whole))
        except (direct.DirectError, ProtocolError) as exc:
            # Only the pool's own process writes here: garbage means it is broken.
            self._end(f"bad message on the worker pipe: {exc}")

    def _end(self, why: str) -> None:
        """No more from the manager: the worker hears it once, as a Bye."""
        if not self.eof:
            self.eof = True
            self.inbox.append((protocol.Bye(why), []))
