"""Object calls on the direct route with the least work per call (internal; see dmp.wire.direct).

    client: ObjCall(0, oid, method) + one payload frame
        --> prefix + header cached per (oid, method, payload size): one join, one write
    host:   a header seen before on this connection --> (oid, method) by one dict lookup,
        else protocol.decode checks it in full (and it is remembered if it is a plain call)
    host:   ObjReply(ref, status) + at most one frame --> prefix + header cached per (status, size)
    client: a reply header seen before --> (status, frames) by one dict lookup

The bytes on the wire are exactly ``direct.encode``'s (a peer that decodes every
message in full reads them the same); only the msgpack work and the message
objects per call are saved. A cached header is looked up by its exact bytes and
the payload length is checked against it, so nothing is taken on trust that
``protocol.decode`` would have refused.
"""

from __future__ import annotations

import socket
from typing import Any

from dmp.errors import ProtocolError
from dmp.wire import direct, protocol
from dmp.wire.protocol import ObjStatus

_PREFIX = direct._PREFIX
_P = _PREFIX.size
JOIN_BELOW = direct.JOIN_BELOW
# Bytes asked for by a message's first read: a call or reply fits, and a buffer this
# size comes from the heap (one of 256 KiB may cost an mmap and munmap per read where
# malloc's mmap threshold was never raised); a longer message is read on in big pieces.
FIRST_READ = 1 << 16
# Messages up to this many bytes are sliced as bytes, longer ones as views.
COPY_BELOW = 4096
# Entries per cache at most; a full cache starts again (headers are a few dozen bytes).
MAX_CACHED = 4096

_calls: dict[tuple[int, str, int], bytes] = {}  # (oid, method, size) -> prefix + header
_replies_out: dict[tuple[int, int, int], bytes] = {}  # (ref, status, size) -> prefix + header
_replies_in: dict[bytes, tuple[int, int]] = {}  # header -> (status, payload size)


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= MAX_CACHED:
        cache.clear()
    cache[key] = value


def _head(msg: protocol.Message, size: int) -> bytes:
    header = protocol.encode(msg, [size])
    return _PREFIX.pack(len(header), size) + header


def read(sock: socket.socket, reader: direct.Reader) -> tuple[bytes | memoryview, int, int] | None:
    """The next whole message on a blocking socket and its header and payload lengths;
    None at EOF. Raises DirectError (over the limit).

    A short message that came in one read is returned as those bytes (slicing a few
    dozen bytes costs less than making views of them), a longer one as a memoryview.
    """
    if not reader.buf:  # the usual case: one read brings exactly one message
        chunk = sock.recv(FIRST_READ)
        if not chunk:
            return None
        n = len(chunk)
        if n >= _P:
            hlen, plen = _PREFIX.unpack_from(chunk, 0)
            if _P + hlen + plen == n and hlen <= protocol.MAX_HEADER_BYTES:
                return (chunk if n <= COPY_BELOW else memoryview(chunk)), hlen, plen
        reader.feed(chunk)
    while True:
        whole = reader.next()
        if whole is not None:
            hlen, plen = _PREFIX.unpack_from(whole, 0)
            return whole, hlen, plen
        chunk = sock.recv(1 << 18)
        if not chunk:
            return None
        reader.feed(chunk)


# --- client ------------------------------------------------------------------------------


def call(
    sock: socket.socket, reader: direct.Reader, oid: int, method: str, frames: list[Any]
) -> tuple[int, list[Any]]:
    """Send ObjCall(0, oid, method) with ``frames`` and read its reply: (status, payload frames).

    Raises:
        DirectError: the host closed the connection, or sent garbage or not an ObjReply.
    """
    if len(frames) == 1 and type(frames[0]) is bytes:
        payload = frames[0]
        key = (oid, method, len(payload))
        head = _calls.get(key)
        if head is None:
            head = _head(protocol.ObjCall(0, oid, method), key[2])
            _remember(_calls, key, head)
        if key[2] < JOIN_BELOW:
            sock.sendall(head + payload)
        else:
            direct.send(sock, [head, payload])
    else:
        direct.send(sock, direct.encode(protocol.ObjCall(0, oid, method), frames))
    got = read(sock, reader)
    if got is None:
        raise direct.DirectError("the object host closed the connection")
    whole, hlen, plen = got
    header = bytes(whole[_P : _P + hlen])
    known = _replies_in.get(header)
    if known is not None and known[1] == plen:
        return known[0], [whole[_P + hlen :]]
    try:
        reply, out = direct.decode(memoryview(whole))
    except ProtocolError as exc:
        raise direct.DirectError(f"the object host sent a bad reply: {exc}") from exc
    if not isinstance(reply, protocol.ObjReply):
        raise direct.DirectError(f"the object host answered with a {type(reply).__name__}")
    if (reply.ref, reply.value, reply.oid, reply.direct) == (0, None, 0, "") and len(out) == 1:
        _remember(_replies_in, header, (reply.status, plen))
    return reply.status, out


# --- host --------------------------------------------------------------------------------


class Calls:
    """The host's side of one connection: each whole request read as (ref, oid, method, frames)."""

    __slots__ = ("known", "reader", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = direct.Reader()
        self.known: dict[bytes, tuple[int, str, int]] = {}  # header -> (oid, method, payload size)

    def next(self) -> tuple[int, Any, Any, list[Any]] | None:
        """The next call, or None at EOF.

        Raises:
            DirectError, ProtocolError: malformed, over the limit, or not an ObjCall.
        """
        got = read(self.sock, self.reader)
        if got is None:
            return None
        whole, hlen, plen = got
        header = bytes(whole[_P : _P + hlen])
        known = self.known.get(header)
        if known is not None and known[2] == plen:
            return 0, known[0], known[1], [whole[_P + hlen :]]
        msg, frames = direct.decode(memoryview(whole))
        if not isinstance(msg, protocol.ObjCall):
            raise direct.DirectError(
                f"only ObjCall travels the direct route, not {type(msg).__name__}"
            )
        if msg.ref == 0 and len(frames) == 1 and type(msg.oid) is int and type(msg.method) is str:
            _remember(self.known, header, (msg.oid, msg.method, plen))
        return msg.ref, msg.oid, msg.method, frames

    def reply(self, ref: int, status: ObjStatus, frames: list[Any]) -> None:
        """Write ObjReply(ref, status) with ``frames``."""
        if len(frames) == 1 and type(frames[0]) is bytes and type(ref) is int:
            payload = frames[0]
            key = (ref, status, len(payload))
            head = _replies_out.get(key)
            if head is None:
                head = _head(protocol.ObjReply(ref, status), key[2])
                if not ref:
                    _remember(_replies_out, key, head)
            if key[2] < JOIN_BELOW:
                self.sock.sendall(head + payload)
            else:
                direct.send(self.sock, [head, payload])
        else:
            direct.send(self.sock, direct.encode(protocol.ObjReply(ref, status), frames))
