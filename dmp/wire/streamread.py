"""Framed messages read off a byte stream: the reading half of ``dmp.wire.direct``'s framing.

    <u32 header length> <u64 payload length> header frames...

Shared by the direct route (client <-> object host, client <-> the manager's
door) and local mode's worker pipes (``dmp.wire.pipechan``,
``dmp_server.workerpipes``). ``dmp.wire.direct`` re-exports all of it.
"""

from __future__ import annotations

import mmap
import socket
import struct
from collections import deque

from dmp.wire import protocol

# Largest message either side accepts (as the manager's default limit).
MAX_MESSAGE_BYTES = 1 << 30
PREFIX_STRUCT = struct.Struct("<IQ")
_PREFIX = PREFIX_STRUCT
# Messages this large are read into a buffer of their own (Reader.recv_from).
DIRECT_ABOVE = 1 << 20


class DirectError(ConnectionError):
    """The direct route failed: refused, closed, a failed key proof or a malformed message.
    ``busy``: the listener closed us before its challenge (too many connecting at once)."""

    def __init__(self, text: str, *, busy: bool = False) -> None:
        super().__init__(text)
        self.busy = busy


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux


def _buffer(n: int, kept: bool) -> bytearray | mmap.mmap:
    """A writable buffer of ``n`` bytes for one large message.

    ``kept``: what is read into it is likely kept a while (results handed to
    the caller of ``map``): fresh anonymous memory with its pages made in one
    go (MAP_POPULATE; a quarter less kernel time than a fault per page as the
    bytes arrive). Else a bytearray: the heap reuses the memory of the last
    one, freed already, and nothing faults at all (a worker's arguments)."""
    if kept and _POPULATE:
        return mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE)
    return bytearray(n)


class Reader:
    """Cuts framed messages out of a byte stream fed in pieces (either side).

    Fed by :meth:`feed` (bytes the caller read) or :meth:`recv_from` (reads
    the socket itself): then a message of ``DIRECT_ABOVE`` bytes or more,
    once its prefix is in, is read straight into a buffer of its own size, and
    :meth:`next` hands out that buffer: its bytes are copied once, by the
    kernel, not again into a growing stream buffer. ``kept``: such messages
    are likely kept a while by whoever gets them (see :func:`_buffer`).
    """

    __slots__ = ("big", "buf", "have", "kept", "ready")

    def __init__(self, *, kept: bool = False) -> None:
        self.buf: bytes | bytearray = b""
        self.kept = kept  # large messages are likely kept a while (see _buffer)
        self.big: bytearray | mmap.mmap | None = None  # the large message being read into its own buffer
        self.have = 0  # bytes of it read
        self.ready: deque[memoryview] = deque()  # large messages read whole, before what buf holds

    def feed(self, data: bytes) -> None:
        if not self.buf:
            self.buf = data  # the usual case, one whole message a read: no copy
        elif isinstance(self.buf, bytearray):
            self.buf += data
        else:
            self.buf = bytearray(self.buf) + data

    def recv_from(self, sock: socket.socket, size: int, flags: int = 0) -> int:
        """One read from ``sock`` (at most ``size`` bytes but into a large message's
        own buffer): the number of bytes read, 0 at EOF. Raises what ``recv`` raises
        (BlockingIOError when ``flags`` say not to wait and nothing waits), and
        DirectError when the message under way is over the size limit."""
        big = self.big
        if big is None:
            total = self._total()
            if total >= DIRECT_ABOVE and len(self.buf) < total:
                # Allocated at the size the prefix claims: only for a peer
                # that is trusted or has proved the key (the worker pipes).
                big = self.big = _buffer(total, self.kept)
                self.have = len(self.buf)
                big[: self.have] = self.buf
                self.buf = b""
        if big is not None:
            with memoryview(big) as view:
                n = sock.recv_into(view[self.have :], 0, flags)
            self.have += n
            if n and self.have == len(big):
                self.big = None
                self.ready.append(memoryview(big))
            return n
        chunk = sock.recv(size, flags)
        if chunk:
            self.feed(chunk)
        return len(chunk)

    def _total(self) -> int:
        """The whole length of the message ``buf`` starts (0: its prefix is not in yet).
        Raises DirectError when it is over the limit."""
        buf = self.buf
        if len(buf) < _PREFIX.size:
            return 0
        hlen, plen = _PREFIX.unpack_from(buf, 0)
        total: int = _PREFIX.size + hlen + plen
        if hlen > protocol.MAX_HEADER_BYTES or total > MAX_MESSAGE_BYTES:
            raise DirectError(
                f"direct-route message of {total} bytes is over the {MAX_MESSAGE_BYTES}-byte limit"
            )
        return total

    def next(self) -> memoryview | None:
        """The next whole message, or None. Raises DirectError when it is over the size limit."""
        if self.ready:
            return self.ready.popleft()
        if self.big is not None:
            return None
        total = self._total()
        buf = self.buf
        if not total or len(buf) < total:
            return None
        if len(buf) == total:
            self.buf = b""
            return memoryview(buf)
        with memoryview(buf) as view:
            whole, rest = bytes(view[:total]), bytearray(view[total:])
        self.buf = rest
        return memoryview(whole)
