"""The one place that knows ZeroMQ: addresses, contexts, and the Channel.

A :class:`Channel` is a socket plus the message signer. It sends
``Message`` + payload frames and receives them back, verifying the signature
before anything else is looked at. ``zmq.ZMQError`` stops here: callers see
:class:`dmp.ManagerUnavailableError` or :class:`dmp.ProtocolError`.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from typing import Any

import zmq

from dmp import protocol
from dmp.errors import AuthenticationError, ProtocolError

_ENDPOINT = re.compile(r"^(tcp|ipc|inproc)://.+$")
_HOSTPORT = re.compile(r"^\[?([A-Za-z0-9_.\-:]+?)\]?:(\d{1,5})$")

# Frames queued per peer before ZeroMQ refuses more. Application-level credit
# (bounded tasks in flight per worker and per client) keeps real queues far
# below this; the bound only stops a runaway peer from eating memory.
HIGH_WATER_MARK = 100_000

# How long a closing socket may keep trying to deliver what it queued.
LINGER_MS = 200


def normalize_address(address: object) -> str:
    """Turn ``(host, port)``, ``"host:port"`` or a ZeroMQ endpoint into an endpoint.

    Raises:
        ValueError: the address is none of those forms.
    """
    if isinstance(address, tuple) and len(address) == 2:
        host, port = address
        if isinstance(host, str) and isinstance(port, int) and 0 <= port < 65536:
            host = host or "127.0.0.1"
            if ":" in host:
                host = f"[{host}]"
            return f"tcp://{host}:{port}"
    elif isinstance(address, str):
        address = address.strip()
        if _ENDPOINT.match(address):
            return address
        m = _HOSTPORT.match(address)
        if m:
            return f"tcp://{address}"
    raise ValueError(
        f"invalid dmp address {address!r}: expected 'tcp://HOST:PORT', 'ipc://PATH', "
        "'inproc://NAME', 'HOST:PORT' or a (host, port) tuple"
    )


def endpoint_host(endpoint: str) -> str:
    """The host part of a tcp:// endpoint ('' for ipc/inproc)."""
    if not endpoint.startswith("tcp://"):
        return ""
    rest = endpoint[len("tcp://") :]
    host = rest.rsplit(":", 1)[0]
    return host.strip("[]")


def is_loopback(endpoint: str) -> bool:
    """True if binding ``endpoint`` cannot be reached from another host."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint_host(endpoint)
    return host in ("localhost", "::1") or host.startswith("127.")


_ctx_lock = threading.Lock()
_ctx: zmq.Context[Any] | None = None
_ctx_pid = 0


def context() -> zmq.Context[Any]:
    """This process's ZeroMQ context; a forked child gets its own, never the parent's."""
    global _ctx, _ctx_pid
    pid = os.getpid()
    if _ctx is None or _ctx_pid != pid:
        with _ctx_lock:
            if _ctx is None or _ctx_pid != pid:
                _ctx = zmq.Context()
                _ctx_pid = pid
    return _ctx


def forget_context_after_fork() -> None:
    """Called in a forked child: drop (never touch) the parent's context."""
    global _ctx, _ctx_pid
    _ctx = None
    _ctx_pid = 0


def make_socket(kind: int, *, identity: bytes | None = None) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = context().socket(kind)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    if identity is not None:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    # Reconnect after a lost peer with exponential backoff, 100 ms up to 5 s.
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
    if kind == zmq.ROUTER:
        # Fail loudly instead of silently dropping a message to an unknown peer.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    return sock


class Channel:
    """A socket that speaks dmp messages. Not thread-safe: one owner thread.

    ``routed`` channels (ROUTER) carry the peer's routing id as the first frame.
    """

    __slots__ = ("routed", "signer", "sock")

    def __init__(self, sock: zmq.Socket[Any], key: bytes | None) -> None:
        self.sock = sock
        self.signer = protocol.Signer(key)
        self.routed = sock.type == zmq.ROUTER

    def send(
        self,
        msg: protocol.Message,
        frames: Sequence[Any] = (),
        *,
        to: bytes | None = None,
        flags: int = 0,
    ) -> None:
        sizes, physical = protocol.pack(frames)
        body = [protocol.encode(msg, sizes), *physical]
        parts: list[Any] = [self.signer.sign(body), *body]
        if to is not None:
            parts.insert(0, to)
        self.sock.send_multipart(parts, flags=flags, copy=False)

    def recv(self, flags: int = 0) -> tuple[bytes | None, protocol.Message, list[Any]]:
        """Receive one message: (routing id or None, message, payload frames).

        Raises:
            zmq.Again: with NOBLOCK and nothing to read.
            ProtocolError: garbage; the raw parts were consumed.
            AuthenticationError: the signature did not verify.
        """
        parts = self.sock.recv_multipart(flags, copy=False)
        ident: bytes | None = None
        if self.routed:
            ident = parts[0].bytes
            parts = parts[1:]
        if len(parts) < 2:
            raise _Refused(ident, ProtocolError(f"message has {len(parts)} frames, expected 2 or more"))
        body = parts[1:]
        views = [p.buffer for p in body]
        if not self.signer.verify(parts[0].bytes, views):
            raise _Refused(ident, AuthenticationError("message signature does not verify (wrong authkey?)"))
        try:
            msg, sizes = protocol.decode(views[0])
            frames = protocol.unpack(sizes, views[1:])
        except ProtocolError as exc:
            raise _Refused(ident, exc) from None
        return ident, msg, frames

    def close(self) -> None:
        self.sock.close()


class _Refused(Exception):
    """A received message was refused; carries who sent it and why."""

    def __init__(self, ident: bytes | None, error: Exception) -> None:
        super().__init__(str(error))
        self.ident = ident
        self.error = error


Refused = _Refused
