"""A bare DEALER on a local pool's embedded manager: what a buggy or hostile peer would send.

A local fork pool's manager listens nowhere (its workers use pipes), so these
tests open an endpoint on it first: the same daemon code as ``dmp manager``'s
behind the same ROUTER, keyless, as a keyless manager on loopback would be."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import zmq

from dmp.wire import protocol


@contextmanager
def raw_dealer(pool: Any, timeout_ms: int = 5000) -> Iterator[zmq.Socket[Any]]:
    """An unsigned DEALER connected to ``pool``'s embedded manager; closed (linger 0) afterwards."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    sock.connect(listen(pool))
    try:
        yield sock
    finally:
        sock.close()
        ctx.term()


def listen(pool: Any) -> str:
    """An endpoint of ``pool``'s embedded manager (one is bound, on its turn, if it has none)."""
    daemon = pool._engine.daemon
    if not daemon.endpoints:
        with pool._engine.turns.held():  # the reactor does not touch the socket meanwhile
            daemon.chan.sock.bind(f"ipc://@dmp-test-{os.getpid()}-{os.urandom(6).hex()}")
            daemon.endpoints.append(daemon.chan.sock.getsockopt_string(zmq.LAST_ENDPOINT))
    return str(daemon.endpoints[0])


def send(sock: zmq.Socket[Any], msg: protocol.Message) -> None:
    sock.send_multipart([b"", protocol.encode(msg)])


def reply(sock: zmq.Socket[Any]) -> protocol.Message:
    """The next message the manager sends, heartbeats skipped."""
    while True:
        parts = sock.recv_multipart()
        msg, _ = protocol.decode(parts[1])
        if not isinstance(msg, protocol.Heartbeat):
            return msg
