"""Calls on the manager's reactor kinds through its door (internal; see dmp_server.door).

    Connection.request(ObjCall) --Welcome.direct set?--> this thread's own unix
        socket to the manager (claiming our peer id) --> one write, one blocking read
    REDIRECT (we are not joined yet), no door here --> None: through ZeroMQ
    interrupted (Ctrl-C) --> ObjCancel on the same socket, read until the
        manager's ack (ref 0); a reply that crossed the cancel is undone there
    the socket closes under a call --> ManagerUnavailableError (the manager is gone)

While it waits, the read wakes once a heartbeat to see whether the session
failed (a manager gone silent), so a call never waits forever.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import msgpack

from dmp import _pid
from dmp.client import directlink
from dmp.errors import ManagerUnavailableError
from dmp.wire import direct, protocol
from dmp.wire.protocol import ObjStatus

# The longest a cancel waits for the manager's ack before the socket is given
# up (reads wake every directlink.LOOK_S to look at the session meanwhile).
CANCEL_WAIT_S = 2.0


def request(
    conn: Any, msg: protocol.ObjCall, frames: Sequence[Any], undo: Any
) -> tuple[protocol.ObjReply, list[Any]] | None:
    """``msg`` (its ref set) through the door of ``conn``'s manager; None: send it through ZeroMQ.

    Raises:
        ManagerUnavailableError: the manager went away during the call.
    """
    welcome = conn.link.welcome
    address = welcome.direct if welcome is not None else ""
    if not address:
        return None
    got = directlink._sock(address, conn.key, welcome.peer_id)
    if got is None:
        return None
    sock, reader = got
    try:
        direct.send(sock, direct.encode(msg, frames))
        reply = _await(conn, sock, reader, msg.ref)
    except (direct.DirectError, OSError) as exc:
        directlink._drop(address, welcome.peer_id)
        raise ManagerUnavailableError(
            f"the manager closed its direct route during a call ({exc})"
        ) from None
    except BaseException:
        _cancel(conn, address, sock, reader, msg, undo)
        raise
    if reply[0].status == ObjStatus.REDIRECT:
        return None
    return reply


def _await(
    conn: Any, sock: socket.socket, reader: direct.Reader, ref: int
) -> tuple[protocol.ObjReply, list[Any]]:
    while True:
        whole = reader.next()
        if whole is not None:
            reply, out = direct.decode(whole)
            if isinstance(reply, protocol.ObjReply) and reply.ref == ref:
                return reply, out
            continue  # the late answer to an undo we did not wait for
        try:
            chunk = sock.recv(1 << 18)
        except BlockingIOError:  # SO_RCVTIMEO passed: is the session still alive?
            if conn.closed is not None:
                raise ManagerUnavailableError(str(conn.closed)) from None
            continue
        if not chunk:
            raise direct.DirectError("the manager closed the connection")
        reader.feed(chunk)


def _cancel(
    conn: Any,
    address: str,
    sock: socket.socket,
    reader: direct.Reader,
    msg: protocol.ObjCall,
    undo: Any,
) -> None:
    """After an interruption: cancel ``msg`` and undo its reply if it came anyway. Never raises;
    a door that does not answer is given up, and the call is cancelled through ZeroMQ instead."""
    try:
        _send_cancel(sock, msg.ref)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while True:
            whole = reader.next()
            if whole is None:
                try:
                    chunk = sock.recv(1 << 18)
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise
                    continue
                if not chunk:
                    raise direct.DirectError("closed")
                reader.feed(chunk)
                continue
            reply, out = direct.decode(whole)
            if not isinstance(reply, protocol.ObjReply):
                continue
            if reply.ref == 0:
                return  # the cancel was handled: no reply to msg can follow
            if reply.ref == msg.ref and undo is not None:
                undoing = undo.call(msg, reply)
                if undoing is not None:
                    undoing.ref = next(conn._refs)  # its answer is skipped as stale
                    direct.send(sock, direct.encode(undoing, list(out)))
    except BaseException:
        directlink._drop(address, conn.link.welcome.peer_id)
        conn.abandon_elsewhere(msg, undo)


def _send_cancel(sock: socket.socket, ref: int) -> None:
    direct.send(sock, direct.encode(protocol.ObjCancel(ref)))


# --- the short path: a reactor kind's call with no message objects -------------------------
# (the same bytes on the wire as request(); see dmp.client.reactor_proxies._ReactorProxy._call)


class _Open(threading.local):
    """This thread's door connections already in use, by manager address:
    (connection, its Welcome, socket, reader), and the process they are for.
    A forked child (only the forking thread lives on in it) starts with none:
    ``call`` drops the parent's on its first use there (no at-fork handler: a
    fresh child pays a page copy or two for each Python function it runs)."""

    def __init__(self) -> None:
        self.pid = _pid.here
        self.by_address: dict[str, tuple[Any, protocol.Welcome, socket.socket, direct.Reader]] = {}


_open = _Open()

_PREFIX = direct.PREFIX_STRUCT
_HEAD = _PREFIX.size
_packb = msgpack.packb
_unpackb = msgpack.unpackb
_VERSION = protocol.PROTOCOL_VERSION
_OBJCALL = protocol.ObjCall.TYPE
_OBJREPLY = protocol.ObjReply.TYPE
_get_ident = threading.get_ident


def _door(address: str) -> tuple[Any, protocol.Welcome, socket.socket, direct.Reader] | None:
    """This thread's door to the manager at ``address``, opened if need be; None: none to use."""
    from dmp.client import proxylink

    conn = proxylink.connection(address)
    welcome = conn.link.welcome
    if not conn.use_door or welcome is None or not welcome.direct:
        return None
    got = directlink._sock(welcome.direct, conn.key, welcome.peer_id)
    if got is None:
        return None
    entry = _open.by_address[address] = (conn, welcome, got[0], got[1])
    return entry


def call(
    address: str,
    oid: int,
    method: str,
    args: list[Any],
    frames: Sequence[Any],
    timeout: float,
    undo: Any,
) -> tuple[int, Any, list[Any]] | None:
    """Call ``method`` of reactor-kind object ``oid`` through the door: (status, value,
    payload frames) of its reply; None: take the usual path (no door, not joined, ...).

    Raises:
        ManagerUnavailableError: the manager went away during the call.
    """
    if _open.pid != _pid.here:  # a forked child: the parent's doors are not ours
        _open.by_address.clear()
        _open.pid = _pid.here
    entry = _open.by_address.get(address)
    if entry is None:
        entry = _door(address)
        if entry is None:
            return None
    conn, welcome, sock, reader = entry
    if conn.closed is not None or conn.link.welcome is not welcome or reader.buf:
        del _open.by_address[address]  # the usual path sorts it out (and fails if it must)
        return None
    ref = next(conn._refs)
    thread = _get_ident()
    if not frames:
        header = _packb([_VERSION, _OBJCALL, [], ref, oid, method, args, timeout, thread])
        data = _PREFIX.pack(len(header), 0) + header
    elif len(frames) == 1 and type(frames[0]) is bytes and len(frames[0]) < direct.JOIN_BELOW:
        item = frames[0]
        header = _packb([_VERSION, _OBJCALL, [len(item)], ref, oid, method, args, timeout, thread])
        data = _PREFIX.pack(len(header), len(item)) + header + item
    else:  # several frames, or big buffers: the usual framing
        data = None
        buffers = direct.encode(protocol.ObjCall(ref, oid, method, args, timeout, thread), frames)
    try:
        if data is not None:
            sock.sendall(data)
        else:
            direct.send(sock, buffers)
        while True:
            try:
                chunk = sock.recv(1 << 18)
                break
            except BlockingIOError:  # SO_RCVTIMEO passed: is the session still alive?
                if conn.closed is not None:
                    raise ManagerUnavailableError(str(conn.closed)) from None
        got = _decode(chunk, ref)
        if got is None:
            got = _reply(conn, sock, reader, ref, chunk)
    except (direct.DirectError, OSError) as exc:
        _open.by_address.pop(address, None)
        directlink._drop(welcome.direct, welcome.peer_id)
        raise ManagerUnavailableError(
            f"the manager closed its direct route during a call ({exc})"
        ) from None
    except BaseException:
        _open.by_address.pop(address, None)
        msg = protocol.ObjCall(ref, oid, method, args, timeout, thread)
        _cancel(conn, welcome.direct, sock, reader, msg, undo)
        raise
    if got[0] == ObjStatus.REDIRECT:  # not joined (any more): look the connection up again
        _open.by_address.pop(address, None)
        return None
    return got


def _decode(chunk: bytes, ref: int) -> tuple[int, Any, list[Any]] | None:
    """``chunk`` as exactly the ObjReply to ``ref`` with at most one payload frame; None: else."""
    n = len(chunk)
    if n < _HEAD:
        return None
    hlen, plen = _PREFIX.unpack_from(chunk, 0)
    if n != _HEAD + hlen + plen:
        return None
    try:
        head = _unpackb(chunk[_HEAD : _HEAD + hlen])
    except Exception:
        return None
    if (
        type(head) is not list
        or len(head) < 5
        or head[1] != _OBJREPLY
        or head[3] != ref
        or head[0] != _VERSION
        or type(head[4]) is not int
    ):
        return None
    sizes = head[2]
    value = head[5] if len(head) > 5 else None
    if not sizes and not plen:
        return head[4], value, []
    if type(sizes) is list and len(sizes) == 1 and sizes[0] == plen:
        return head[4], value, [memoryview(chunk)[_HEAD + hlen :]]
    return None


def _reply(
    conn: Any, sock: socket.socket, reader: direct.Reader, ref: int, chunk: bytes
) -> tuple[int, Any, list[Any]]:
    """The reply to ``ref`` when the first read was not exactly it: the usual reading and checks."""
    if not chunk:
        raise direct.DirectError("the manager closed the connection")
    reader.feed(chunk)
    reply, out = _await(conn, sock, reader, ref)
    return reply.status, reply.value, out
