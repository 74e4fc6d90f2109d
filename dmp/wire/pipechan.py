"""Local mode's worker pipes: a unix socketpair between the embedded daemon and a worker it forked.

    LocalEngine's Supervisor.start: socket.socketpair() --fork--> worker keeps one end
    worker (WorkerPipe) --[TaskDone, Bye...]--> daemon's reactor (dmp_server.workerpipes)
    worker <--[Dispatch, ForgetJobs, Bye...]-- daemon

The worker says no Hello and gets no Welcome: the daemon joins it at the
fork, from what its supervisor knows (dmp_server.workerpipes), its config
carries the daemon's message limit, and its first Dispatch may be waiting
on the pipe before the worker runs.

The messages are the protocol's own (``protocol.encode`` headers and
payload frames), framed as on the direct route (``dmp.wire.direct``:
``<u32 header length> <u64 payload length> header frames...``). One hop
each way between two processes, where the ZeroMQ route crosses four
threads (each side's I/O thread too).

A Dispatch that came alone and whole in one read is decoded by
``decode_dispatch`` and a TaskDone of small frames written by
``WorkerPipe.send_done``: the same objects and bytes as the general path, in
fewer calls, which a freshly forked worker pays for in page copies
(docs/performance.md, "The worker's first task, page by page").

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

import _socket
import collections
import os
import select
import socket
from collections.abc import Sequence
from typing import Any

import msgpack

from dmp.errors import ProtocolError
from dmp.wire import direct, protocol

READ_BYTES = 1 << 18
_PREFIX = direct.PREFIX_STRUCT
_P = _PREFIX.size
_VERSION = protocol.PROTOCOL_VERSION
_DISPATCH = protocol.Dispatch.TYPE
_TASK_DONE = protocol.TaskDone.TYPE
_JUST_INT = frozenset({int})
_UNPACK = dict(raw=False, strict_map_key=True, **protocol.UNPACK_LIMITS)
_detach = _socket.socket.detach
_DONTWAIT = int(socket.MSG_DONTWAIT)  # (an int: the flag is an enum, one more object to touch)
_DISPATCH_CLASS = protocol.Dispatch
_new = object.__new__


class WorkerPipe:
    """The worker's end: the subset of Channel and PeerLoop that dmp.node.worker uses.

    Blocking writes (the daemon always reads); reads never block: what one
    ``recv`` brings is cut into messages kept in order here.
    """

    __slots__ = ("_pack", "_poll", "eof", "inbox", "reader", "sock")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self.sock = sock
        self._pack = msgpack.Packer(use_bin_type=True).pack  # send_done's (made before the fork, as the rest)
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

    def send_done(self, items: list[list[Any]], frames: Sequence[bytes]) -> None:
        """``send(TaskDone(items), frames)`` for small byte frames: the same bytes, in
        a few calls (a fresh worker copies a page or two for each function it runs)."""
        for f in frames:  # (no comprehension: each is a code object of its own in 3.11)
            if type(f) is not bytes:
                self.send(protocol.TaskDone(items), frames)
                return
        sizes = list(map(len, frames))
        payload = sum(sizes)
        if payload >= direct.JOIN_BELOW:
            self.send(protocol.TaskDone(items), frames)
            return
        header = self._pack([_VERSION, _TASK_DONE, sizes, items])
        try:
            self.sock.sendall(b"".join([_PREFIX.pack(len(header), payload), header, *frames]))
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
        """Nothing to say: the daemon joined this worker when it forked it."""

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
        if self.inbox:
            return self.inbox.popleft()
        if self.eof:
            return None
        reader = self.reader
        if reader.buf or reader.big is not None or reader.ready:
            self._read()  # the rest of a message that came in pieces
            return self.inbox.popleft() if self.inbox else None
        # A read with nothing held back: a Dispatch that came alone and whole (a pool's
        # first task, most of a busy worker's) is decoded by decode_dispatch and returned;
        # anything else goes to the reader and the inbox, as ever. (Here, not in a method
        # of its own: a fresh worker copies a page or two for each function it runs.)
        try:
            data = self.sock.recv(READ_BYTES, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            self._end("the pool's manager closed the pipe")
        else:
            got = decode_dispatch(data)
            if got is not None:
                return got
            reader.feed(data)
            self._parse()
        return self.inbox.popleft() if self.inbox else None

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
        self._parse()

    def _parse(self) -> None:
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


def close_inherited(ends: tuple[socket.socket, ...]) -> None:
    """In a forked worker: close the daemon's ends of the pipes it inherited. By
    ``os.close`` of what ``_socket.socket.detach`` gives (not ``socket.close``, nor
    ``socket.socket.detach``, whose Python calls would cost a fresh worker a page
    copy or two each)."""
    for end in ends:
        fd = _detach(end)
        if fd >= 0:
            os.close(fd)


def decode_dispatch(data: bytes) -> tuple[protocol.Dispatch, list[memoryview]] | None:
    """What ``direct.decode`` makes of ``data`` if it is exactly one framed Dispatch
    whose jobs and tasks are well formed and whose frames are all in the pack;
    None for anything else (``direct.decode`` then reads it, and refuses it if
    it must). Fewer calls than the general path: a fresh worker copies a page
    or two for every function it runs for the first time."""
    if len(data) < _P:
        return None
    hlen, plen = _PREFIX.unpack_from(data, 0)
    if _P + hlen + plen != len(data) or hlen > protocol.MAX_HEADER_BYTES:
        return None
    view = memoryview(data)
    try:
        head = msgpack.unpackb(view[_P : _P + hlen], **_UNPACK)
    except Exception:  # msgpack raises several unrelated types
        return None
    if type(head) is not list or len(head) != 5 or type(head[0]) is not int or type(head[1]) is not int:
        return None
    version, code, sizes, jobs, tasks = head
    if version != _VERSION or code != _DISPATCH or type(sizes) is not list or type(jobs) is not list:
        return None
    if type(tasks) is not list or not _JUST_INT.issuperset(map(type, sizes)) or (sizes and min(sizes) < 0):
        return None
    nframes = 0
    for job in jobs:
        if type(job) is not list or len(job) != 3 or type(job[0]) is not int or type(job[1]) is not int:
            return None
        if job[1] < 0 or type(job[2]) not in (int, float):
            return None
        nframes += job[1]
    for task in tasks:
        if type(task) is not list or len(task) != 4 or not _JUST_INT.issuperset(map(type, task)) or task[3] < 0:
            return None
        nframes += task[3]
    if nframes != len(sizes) or sum(sizes) != plen:
        return None
    frames = []
    off = _P + hlen
    for n in sizes:
        frames.append(view[off : off + n])
        off += n
    msg = _new(_DISPATCH_CLASS)  # Dispatch(jobs, tasks), without its __init__'s Python call
    msg.jobs, msg.tasks = jobs, tasks
    return msg, frames
