"""The direct route: a unix stream socket between a client and the object host on one machine (internal).

    client thread --connect(abstract unix socket)--> object host
        <-- b"DMPD1" + K|- + Ns        the host's fresh nonce (K: it has a key)
        --> Nc + MAC(key, "C", Ns, Nc)  the client proves the key
        <-- MAC(key, "S", Nc, Ns)       the host proves it too
    client --[ObjCall header, payload]--> host --[ObjReply header, payload]--> client

The manager stays the authority: it creates and releases objects, tracks who
holds them and tells a client, in a signed ``ObjReply.direct``, where the
host listens for an object this client already holds. Messages are the
dmp protocol's own headers (``protocol.encode``) and payload frames, framed
as ``<u32 header length> <u64 payload length> header frames...``.

The key proof is the manager's (HMAC-SHA256 with the same authkey, over a
mutual challenge of fresh nonces), made once per connection: a connected
unix stream socket carries only what its two ends write, so there is nothing
to replay or inject, and messages are not signed one by one. Without a key
(a loopback manager with no authkey), nothing is proved, as on its endpoint.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from dmp.errors import ProtocolError
from dmp.wire import protocol
from dmp.wire.streamread import DIRECT_ABOVE as DIRECT_ABOVE
from dmp.wire.streamread import MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES
from dmp.wire.streamread import PREFIX_STRUCT
from dmp.wire.streamread import DirectError as DirectError
from dmp.wire.streamread import Reader as Reader

MAGIC = b"DMPD1"
NONCE_BYTES = 16
MAC_BYTES = 32  # HMAC-SHA256
PREFIX = "unix:@"
HANDSHAKE_TIMEOUT_S = 5.0
_PREFIX = PREFIX_STRUCT


def new_address() -> str:
    """A fresh abstract unix socket name (Linux; nothing on the file system to clean up)."""
    return f"{PREFIX}dmp-objhost-{os.getpid()}-{os.urandom(8).hex()}"


def sockaddr(address: str) -> str:
    if not address.startswith(PREFIX):
        raise DirectError(f"not a direct-route address: {address!r}")
    return "\0" + address[len(PREFIX) :]


def listen(address: str) -> socket.socket:
    """A listening socket at ``address``; raises OSError where abstract unix sockets do not exist."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(sockaddr(address))
        sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _mac(key: bytes | None, side: bytes, first: bytes, second: bytes) -> bytes:
    return protocol.Signer(key).sign([first, second], b"dmp-direct " + side)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise DirectError("the other side closed the connection during the key proof")
        out += chunk
    return bytes(out)


def serve_handshake(sock: socket.socket, key: bytes | None) -> None:
    """Host side: challenge the client, check its proof, prove ours. Raises DirectError when refused."""
    ns = os.urandom(NONCE_BYTES)
    sock.sendall(MAGIC + (b"K" if key else b"-") + ns)
    nc = _read_exactly(sock, NONCE_BYTES)
    if key:
        proof = _read_exactly(sock, MAC_BYTES)
        if not _equal(proof, _mac(key, b"C", ns, nc)):
            raise DirectError("a client failed the key proof (wrong authkey)")
        sock.sendall(_mac(key, b"S", nc, ns))


def connect(address: str, key: bytes | None, timeout: float = HANDSHAKE_TIMEOUT_S) -> socket.socket:
    """Client side: a blocking socket to the host at ``address`` that proved the key both ways.

    Raises:
        DirectError: nothing listens there, or either side failed the key proof.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr(address))
            try:
                hello = _read_exactly(sock, len(MAGIC) + 1 + NONCE_BYTES)
            except (DirectError, TimeoutError) as exc:  # closed or not served before its challenge
                raise DirectError(f"the listener at {address} is busy: {exc}", busy=True) from exc
            if hello[: len(MAGIC)] != MAGIC:
                raise DirectError(f"{address} does not speak the dmp direct route")
            keyed, ns, nc = (
                hello[len(MAGIC)] == ord("K"),
                hello[len(MAGIC) + 1 :],
                os.urandom(NONCE_BYTES),
            )
            if keyed != bool(key):
                why = "requires an authkey" if keyed else "has no authkey and cannot prove ours"
                raise DirectError(
                    f"the object host at {address} {why}: the key proof cannot be made"
                )
            if not key:
                sock.sendall(nc)
            else:
                sock.sendall(nc + _mac(key, b"C", ns, nc))
                if not _equal(_read_exactly(sock, MAC_BYTES), _mac(key, b"S", nc, ns)):
                    raise DirectError(f"the object host at {address} failed the key proof")
        except (OSError, ValueError) as exc:
            if isinstance(exc, DirectError):
                raise
            raise DirectError(f"cannot reach the object host at {address}: {exc}") from exc
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


MAX_CLAIM_BYTES = 255


def send_claim(sock: socket.socket, peer_id: str) -> None:
    """Client side, after the key proof: which of the manager's peers this connection speaks for."""
    raw = peer_id.encode()
    if len(raw) > MAX_CLAIM_BYTES:
        raise DirectError("peer id too long")
    sock.sendall(bytes([len(raw)]) + raw)


def read_claim(sock: socket.socket) -> str:
    """Host side: the peer id a proven client speaks for."""
    n = _read_exactly(sock, 1)[0]
    return _read_exactly(sock, n).decode()


def _equal(a: bytes, b: bytes) -> bool:
    import hmac

    return hmac.compare_digest(a, b)


# --- messages ----------------------------------------------------------------------------
# A message is <u32 header length> <u64 payload length> header payload: the
# header is ``protocol.encode(msg, sizes)`` with every logical frame's size,
# the payload the frames back to back (written without a copy, read as views).


# Messages up to this many bytes are joined into one buffer before writing
# (one copy is cheaper than a scatter list); bigger payloads go without a copy.
JOIN_BELOW = 64 * 1024


def encode(msg: protocol.Message, frames: Sequence[Any] = ()) -> list[Any]:
    """The buffers of one framed message: prefix, header, then each payload frame."""
    sizes = [f.nbytes if isinstance(f, memoryview) else len(f) for f in frames]
    header = protocol.encode(msg, sizes)
    payload = sum(sizes)
    prefix = _PREFIX.pack(len(header), payload)
    if payload < JOIN_BELOW:
        return [b"".join([prefix, header, *frames])]
    return [prefix + header, *frames]


def send(sock: socket.socket, buffers: list[Any]) -> None:
    """Send every byte of ``buffers`` on a blocking socket (a partial sendmsg continues)."""
    if len(buffers) == 1:
        sock.sendall(buffers[0])
        return
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= views[0].nbytes:
            sent -= views[0].nbytes
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


def decode(message: memoryview) -> tuple[protocol.Message, list[Any]]:
    """A whole framed message's header and logical payload frames (views into it). Raises ProtocolError."""
    hlen, plen = _PREFIX.unpack_from(message, 0)
    msg, sizes = protocol.decode(message[_PREFIX.size : _PREFIX.size + hlen])
    if any(n < 0 for n in sizes) or sum(sizes) != plen:
        raise ProtocolError("direct-route payload does not match the header's layout")
    return msg, protocol.unpack(sizes, [message[_PREFIX.size + hlen :]]) if sizes else []


def request(
    sock: socket.socket, reader: Reader, msg: protocol.Message, frames: Sequence[Any]
) -> tuple[protocol.Message, list[Any]]:
    """Send one request on a blocking client socket and read its reply.

    Raises:
        DirectError: the host closed the connection, or sent garbage.
    """
    send(sock, encode(msg, frames))
    while True:
        whole = reader.next()
        if whole is not None:
            try:
                return decode(whole)
            except ProtocolError as exc:
                raise DirectError(f"the object host sent a bad reply: {exc}") from exc
        chunk = sock.recv(1 << 18)
        if not chunk:
            raise DirectError("the object host closed the connection")
        reader.feed(chunk)


def accept_waiting(
    listener: socket.socket, admit: Callable[[], bool], serve: Callable[[socket.socket], None], name: str
) -> bool:
    """Take every connection waiting on a non-blocking ``listener``: each that
    ``admit()`` lets in is served by ``serve`` on a thread of its own, the rest
    are closed. False when out of file descriptors (stop polling the listener
    for a while: it stays readable)."""
    while True:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as exc:
            logging.getLogger("dmp.direct").warning("direct route: accept failed (%s); new connections wait", exc)
            return False
        if not admit():
            sock.close()
            continue
        threading.Thread(target=serve, args=(sock,), name=name, daemon=True).start()


class Outbox:
    """What a non-blocking socket would not take yet, in order: views of the
    message buffers themselves, never joined or shifted (a 16 MiB frame is not
    copied as it drains)."""

    __slots__ = ("nbytes", "views")

    # At most this many buffers per sendmsg.
    VIEWS_PER_WRITE = 64

    def __init__(self) -> None:
        self.views: deque[memoryview] = deque()
        self.nbytes = 0

    def __bool__(self) -> bool:
        return bool(self.views)

    def add(self, buffers: Sequence[Any]) -> None:
        for b in buffers:
            view = memoryview(b).cast("B")
            self.views.append(view)
            self.nbytes += view.nbytes

    def write(self, sock: socket.socket) -> bool:
        """Write what waits until ``sock`` would block; False if the connection broke."""
        views = self.views
        while views:
            try:
                sent = sock.sendmsg(list(itertools.islice(views, self.VIEWS_PER_WRITE)))
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            self.nbytes -= sent
            while sent and sent >= views[0].nbytes:
                sent -= views.popleft().nbytes
            if sent:
                views[0] = views[0][sent:]
        return True
