"""A bare DEALER on a local pool's embedded manager: what a buggy or hostile peer would send."""

from __future__ import annotations

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
    sock.connect(pool._engine.daemon.endpoints[0])
    try:
        yield sock
    finally:
        sock.close()
        ctx.term()


def send(sock: zmq.Socket[Any], msg: protocol.Message) -> None:
    sock.send_multipart([b"", protocol.encode(msg)])


def reply(sock: zmq.Socket[Any]) -> protocol.Message:
    """The next message the manager sends, heartbeats skipped."""
    while True:
        parts = sock.recv_multipart()
        msg, _ = protocol.decode(parts[1])
        if not isinstance(msg, protocol.Heartbeat):
            return msg
