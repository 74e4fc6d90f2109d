"""A process's direct-route connections to object hosts (internal; see dmp.wire.direct).

    proxy._callmethod --oid granted a direct address?--> call() on this thread's
        own socket to that host: one write, one blocking read, no other thread woken
    REDIRECT, no route (another machine, refused) --> None: the caller asks the manager

Each thread has its own socket per host (as multiprocessing's proxies have a
connection per thread), so a call takes no lock and wakes nobody. A forked
child drops what it inherited. A host that fails its key proof or cannot be
reached is not tried again by this process.
"""

from __future__ import annotations

import math
import socket
import struct
import threading
import time
from typing import Any, NamedTuple

from dmp import _pid
from dmp.wire import direct, directcall
from dmp.wire.protocol import ObjStatus

# address -> when to try it again: never (inf) after nothing listened there or a
# failed key proof; a second after a busy listener closed us (too many at once).
_unreachable: dict[str, float] = {}
RETRY_BUSY_S = 1.0
# Seconds a read on the manager's door waits before the caller looks at its session.
LOOK_S = 1


class _Conn(NamedTuple):
    """One thread's connection; closed when dropped, so a thread's or the
    process's end closes it quietly (no ResourceWarning for an open socket)."""

    sock: socket.socket
    reader: direct.Reader

    def __del__(self) -> None:
        self.sock.close()


class _Local(threading.local):
    def __init__(self) -> None:
        self.pid = _pid.here
        self.socks: dict[str, _Conn] = {}


_local = _Local()


def _sock(
    address: str, key: bytes | None, claim: str | None = None
) -> tuple[socket.socket, direct.Reader] | None:
    local = _local
    if local.pid != _pid.here:  # a forked child: the parent's connections are not ours
        for sock, _ in local.socks.values():
            sock.close()
        local.socks.clear()
        local.pid = _pid.here
    slot = address if claim is None else f"{address}#{claim}"  # a connection speaks for one peer
    got = local.socks.get(slot)
    if got is None:
        if address in _unreachable and time.monotonic() < _unreachable[address]:
            return None
        try:
            sock = direct.connect(address, key)
            if claim is not None:
                try:
                    direct.send_claim(sock, claim)
                    # A blocking read that gives up after LOOK_S (EAGAIN), with no extra
                    # poll per call as a Python-level timeout would cost.
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", LOOK_S, 0)
                    )
                except BaseException:
                    sock.close()
                    raise
            got = _Conn(sock, direct.Reader())
        except (direct.DirectError, OSError) as exc:
            busy = isinstance(exc, direct.DirectError) and exc.busy
            _unreachable[address] = time.monotonic() + RETRY_BUSY_S if busy else math.inf
            return None
        local.socks[slot] = got
    return got


def call(address: str, key: bytes | None, oid: int, method: str, frames: list[Any]) -> tuple[int, list[Any]] | None:
    """Call ``method`` of ``oid`` at the host ``address``: (ObjStatus, payload frames) of its
    reply, OK or RAISED; None: ask the manager instead.

    Raises:
        ReferenceError: the host went away during the call (its objects are lost with it).
        BaseException: an interruption (Ctrl-C) is raised as is; the connection is closed,
            since its reply could still come.
    """
    local = _local
    got: tuple[socket.socket, direct.Reader] | None = (
        local.socks.get(address) if local.pid == _pid.here else None
    )  # _sock's usual case, inline
    if got is None:
        got = _sock(address, key)
        if got is None:
            return None
    try:
        status, out = directcall.call(got[0], got[1], oid, method, frames)
    except (direct.DirectError, OSError) as exc:
        _drop(address)
        _unreachable[address] = math.inf
        raise ReferenceError(
            f"the object host went away during the call ({exc}); objects it held are lost"
        ) from None
    except BaseException:
        _drop(address)
        raise
    if status == ObjStatus.REDIRECT:
        return None
    return status, out


def _drop(address: str, claim: str | None = None) -> None:
    """Give up this thread's connection (only ever after _sock, so it is this process's own):
    shut down, so the other end sees EOF even while a forked child holds a copy."""
    got = _local.socks.pop(address if claim is None else f"{address}#{claim}", None)
    if got is not None:
        try:
            got[0].shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        got[0].close()
