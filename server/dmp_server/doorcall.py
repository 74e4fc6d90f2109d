"""The door's short path: an ObjCall on a reactor kind, decoded and answered without message objects.

    one read from a door connection that holds exactly one ObjCall
        --> decode(): msgpack header -> checked fields (no ObjCall made)
        --> serve(): a joined client's call on a live reactor-kind object
            --> the kind's QUICK call (a put with room, a get of an item, ...):
                answered OK at once (Door.reply_ok: the header made here)
            --> else its full call (ObjectServer.run): replies to send, parking
    anything else (several messages in a read, a host kind, an unknown object,
    a peer not joined, a header the checks below do not pass) --> False: the
    usual path (dmp_server.door._read, routing) decodes, checks and answers it

The answers are the ones the usual path gives: only what that path would
accept passes here (the same field types; arguments only plain scalars).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import msgpack

from dmp.wire import direct, protocol
from dmp_server import shared
from dmp_server.door import DoorConn
from dmp_server.scheduler import Command, Send

if TYPE_CHECKING:
    from dmp_server.routing import Routing

_PREFIX = direct.PREFIX_STRUCT
_HEAD = _PREFIX.size
_unpackb = msgpack.unpackb
_VERSION = protocol.PROTOCOL_VERSION
_OBJCALL = protocol.ObjCall.TYPE
_CLIENT = protocol.Role.CLIENT
FAILED = protocol.ObjStatus.FAILED
log = logging.getLogger("dmp.manager")
_SCALARS = frozenset({int, float, str, bool, type(None)})

Call = tuple[
    int, int, str, list[Any], float, int, list[Any]
]  # ref, oid, method, args, timeout, thread, frames


def decode(chunk: bytes) -> Call | None:
    """``chunk`` as one ObjCall with at most one payload frame; None: anything else."""
    n = len(chunk)
    if n < _HEAD:
        return None
    hlen, plen = _PREFIX.unpack_from(chunk, 0)
    if n != _HEAD + hlen + plen or hlen > protocol.MAX_HEADER_BYTES:
        return None
    try:
        # Without the usual limits (their keywords cost more than the decoding): the
        # header is bounded by one read, and only plain scalars pass the checks below.
        head = _unpackb(chunk[_HEAD : _HEAD + hlen])
    except Exception:  # the usual decoding says what is wrong
        return None
    if type(head) is not list or len(head) != 9 or head[1] != _OBJCALL or head[0] != _VERSION:
        return None
    _, _, sizes, ref, oid, method, args, timeout, thread = head
    if (
        type(ref) is not int
        or type(oid) is not int
        or type(method) is not str
        or type(args) is not list
        or type(timeout) is not float
        or type(thread) is not int
        or type(sizes) is not list
    ):
        return None
    for arg in args:
        if type(arg) not in _SCALARS:
            return None
    if not sizes:
        if plen:
            return None
        frames: list[Any] = []
    elif len(sizes) == 1 and sizes[0] == plen:
        frames = [chunk[_HEAD + hlen :]]  # a copy: the reactor may keep it (a queue item)
    else:
        return None
    return ref, oid, method, args, timeout, thread, frames


def serve(r: Routing, conn: DoorConn, chunk: bytes) -> bool:
    """Handle ``chunk`` from ``conn`` if it is a call the short path takes; False: not taken."""
    call = decode(chunk)
    if call is None:
        return False
    peer = conn.peer
    known = r.peers.by_id.get(peer)
    if known is None or known.role != _CLIENT:  # as Routing._door_client
        return False  # the usual path answers REDIRECT
    ref, oid, method, args, timeout, thread, frames = call
    objects = r.objects
    entry = objects.entries.get(oid)
    if entry is None:
        return False
    obj = entry.obj
    if obj is None or entry.lost:
        return False  # a host kind, or lost: the usual path
    if peer not in entry.holders:
        objects.hold(peer, oid)
    door = r.door
    assert door is not None
    try:
        quick = obj.QUICK.get(method)
        if quick is not None:
            answer = quick(obj, args, frames)
            if answer is not None:  # answered OK now, nothing else happened
                door.reply_ok(conn, ref, answer[0], answer[1], r._poller)
                return True
        req = shared.Request(peer, ref, thread, method, args, frames, timeout)
        cmds = objects.run(entry, obj, req, time.monotonic())
    except shared.Refusal as refusal:
        cmds = [Send(peer, protocol.ObjReply(ref, FAILED, [refusal.name, refusal.text]))]
    except Exception as exc:  # as ObjectServer.handle: one bad request must never stop the reactor
        log.warning("bad ObjCall from %s: %r", peer, exc)
        cmds = [
            Send(peer, protocol.ObjReply(ref, FAILED, ["TypeError", f"malformed request: {exc}"]))
        ]
    _send(r, conn, peer, ref, cmds)
    return True


def _send(r: Routing, conn: DoorConn, peer: str, ref: int, cmds: list[Command]) -> None:
    """The call's own reply straight back on ``conn``; the rest as usual (calls it woke)."""
    door = r.door
    assert door is not None
    answered = False
    for cmd in cmds:
        if type(cmd) is Send:
            msg = cmd.msg
            if (
                not answered
                and type(msg) is protocol.ObjReply
                and msg.ref == ref
                and cmd.to == peer
            ):
                door.reply(conn, msg, cmd.frames, r._poller)
                answered = True
            else:  # a parked call this one woke (another thread's, or another peer's)
                r._send(cmd.to, msg, cmd.frames)
        else:
            r._carry_out([cmd])
    if not answered:  # parked: its reply comes back this way when it is woken or expires
        door.routes[(peer, ref)] = conn
