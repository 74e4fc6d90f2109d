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
import time
from collections.abc import Sequence
from typing import Any

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
