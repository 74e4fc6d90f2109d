"""The one place that knows ZeroMQ: addresses, contexts, and the Channel.

A :class:`Channel` is a socket plus the message signer. It sends
``Message`` + payload frames and receives them back, verifying the signature
before anything else is looked at. ``zmq.ZMQError`` stops here: callers see
:class:`dmp.ManagerUnavailableError` or :class:`dmp.ProtocolError`.

"Session" in this module always means the signing session (a nonce and a
counter each way, opened by the manager's Welcome); the client's job
bookkeeping is ``dmp.client.session.Session``, a different thing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import msgpack
import zmq

from dmp import _config
from dmp.errors import MessageTooLargeError, ProtocolError
from dmp.wire import handshake, protocol

# Frames queued per peer before ZeroMQ refuses more. Application-level credit
# (bounded tasks in flight per worker and per client) keeps real queues far
# below this; the bound only stops a runaway peer from eating memory.
HIGH_WATER_MARK = 100_000

# How long a closing socket may keep trying to deliver what it queued.
LINGER_MS = 200


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


class Curve:
    """CURVE keys: the manager's key pair (server) or its public key (everyone else).

    Files are zmq.auth certificates in one directory: ``server.key`` (public)
    and ``server.key_secret`` (the manager's only). Clients and workers make a
    throwaway key pair per socket: CURVE encrypts; the authkey authenticates.
    """

    def __init__(
        self, directory: str | None, *, server: bool, public: bytes | None = None, secret: bytes | None = None
    ) -> None:
        import zmq.auth

        if directory is None:  # a pinned public key (from a join token), or a pair in memory: no files
            if public is None or (server and secret is None):
                raise ValueError("a CURVE server needs its key pair" if server else "a CURVE client needs the server's public key")
            self.public: bytes = public
            self.secret: bytes | None = secret if server else None
            return

        secret_file = os.path.join(directory, "server.key_secret")
        public_file = os.path.join(directory, "server.key")
        if server and not os.path.exists(secret_file):
            os.makedirs(directory, mode=0o700, exist_ok=True)
            # Key files dmp writes are its owner's only: no window where the
            # secret is readable by others (a daemon starting: one thread).
            old_umask = os.umask(0o077)
            try:
                zmq.auth.create_certificates(directory, "server")
            finally:
                os.umask(old_umask)
        try:
            public, secret = zmq.auth.load_certificate(secret_file if server else public_file)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read CURVE keys in {directory}: {exc}") from None
        self.public = public
        self.secret = secret if server else None

    def apply(self, sock: zmq.Socket[Any], server_key: bytes | None = None) -> None:
        """Make ``sock`` a CURVE server (ROUTER) or client of ``server_key`` (default: ours)."""
        if sock.type == zmq.ROUTER:
            if self.secret is None:
                raise ValueError("a CURVE server needs server.key_secret")
            sock.curve_secretkey = self.secret
            sock.curve_publickey = self.public
            sock.curve_server = True
        else:
            public, secret = zmq.curve_keypair()
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            sock.curve_serverkey = server_key or self.public


_curve: Curve | None = None
_curve_checked = False


def use_curve(directory: str | None, *, server: bool = False) -> None:
    """Encrypt every socket this process makes from now on (None: only if DMP_CURVE)."""
    global _curve, _curve_checked
    found = _config.curve_dir(directory)
    _curve = Curve(found, server=server) if found else None
    _curve_checked = True
    if found:
        _config.export_curve(found)


def pin_curve_key(public: bytes) -> None:
    """Encrypt every socket from now on, trusting only the server with this public key."""
    global _curve, _curve_checked
    _curve = Curve(None, server=False, public=public)
    _curve_checked = True


def use_own_curve_server() -> bytes:
    """Serve CURVE with a fresh key pair of this process's own; returns its public key.

    For a manager that a client under CURVE starts itself (dmp.managers): it has
    no cluster secret; its peers learn this public key with its address.
    """
    global _curve, _curve_checked
    public, secret = zmq.curve_keypair()
    _curve = Curve(None, server=True, public=public, secret=secret)
    _curve_checked = True
    return public


_server_keys: dict[str, bytes] = {}  # endpoint -> CURVE public key of a server that is not the cluster's


def remember_server_key(endpoint: str, public: bytes) -> None:
    """Sockets connecting to ``endpoint`` expect this CURVE server key (see use_own_curve_server)."""
    _server_keys[endpoint] = public


def server_keys() -> dict[str, bytes]:
    """Every CURVE server key remembered by endpoint (public keys: they may travel)."""
    return dict(_server_keys)


def server_key_for(endpoint: str) -> bytes | None:
    """The CURVE public key remembered for ``endpoint``, or None (the cluster's, if any)."""
    return _server_keys.get(endpoint)


def curve_public_key() -> bytes | None:
    """The manager's CURVE public key in use, or None without CURVE."""
    curve = _curve_settings()
    return curve.public if curve is not None else None


def curve_enabled() -> bool:
    return _curve_settings() is not None


def _curve_settings() -> Curve | None:
    if not _curve_checked:
        use_curve(None)
    return _curve


def make_socket(kind: int, *, identity: bytes | None = None, server_key: bytes | None = None) -> zmq.Socket[Any]:
    """A socket with dmp's options; under CURVE a ROUTER serves it, a DEALER is a client
    of ``server_key`` (default: the cluster manager's)."""
    sock: zmq.Socket[Any] = context().socket(kind)
    curve = _curve_settings()
    if curve is not None and kind in (zmq.ROUTER, zmq.DEALER):
        curve.apply(sock, server_key)
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
        # A second connection under an identity in use takes it over: a
        # squatter cannot lock the rightful owner out (it must then still
        # prove the key before it gets anything).
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    return sock


# The compiled send under pyzmq's Python Socket.send (which adds only DRAFT
# routing_id/group handling and a Python frame per frame sent).
_send = zmq.backend.Socket.send


def _send_duck(sock: Any, data: Any, flags: int = 0, copy: bool = True) -> Any:
    return sock.send(data, flags, copy=copy)

# Plain ints: the zmq enums cost an enum construction per use.
_SNDMORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
# The compiled zmq_poll: for a socket it reads ZMQ_EVENTS as Socket.get does, without
# get's option-type lookup through the SocketOption enum (~3k instructions, not ~9k).
_zmq_poll = zmq.backend.zmq_poll
NOBLOCK = int(zmq.NOBLOCK)
# What a bind or connect raises for an unusable address (the CLI turns it into exit 2).
ZMQError = zmq.ZMQError

class Channel:
    """A socket that speaks dmp messages. Not thread-safe: one owner thread.

    ``routed`` channels (ROUTER, the manager) carry the peer's routing id as
    the first frame. With a key, every message is signed and checked by the
    channel's :class:`~dmp.wire.handshake.Keyring` (the mutual challenge and
    per-session counters described there). A DEALER holds back what it sends
    after Hello until the Welcome arrives, then proves the key with a
    Heartbeat before anything else. ``max_message`` (bytes, 0: none) bounds
    a whole message: header and every payload frame together.
    """

    __slots__ = ("_held", "_native", "_poll_in", "keys", "max_message", "peer_address", "routed", "sock", "used")

    def __init__(self, sock: zmq.Socket[Any], key: bytes | None) -> None:
        self.sock = sock
        self._native = isinstance(sock, zmq.backend.Socket)  # else a stand-in with a send method (tests)
        self._poll_in = [(sock, _POLLIN)]  # readable()'s zmq_poll items
        self.routed = sock.type == zmq.ROUTER
        self.keys = handshake.Keyring(key or None, self.routed)
        self._held: list[tuple[protocol.Message, Sequence[Any], int]] = []
        self.peer_address = ""  # IP of the sender of the last Hello received
        self.max_message = 0
        # Set by every send, recv and readable: a reactor waiting on the socket's fd (which
        # such a call may quiet with messages left to read) looks at ZMQ_EVENTS first, and
        # clears it once it saw the socket empty (dmp_server.waiting, dmp.client.link).
        self.used = True

    @property
    def signer(self) -> protocol.Signer:
        return self.keys.signer

    # --- sessions (manager side) --------------------------------------------------

    def open_session(self, ident: bytes) -> bytes:
        """A fresh nonce for the Hello just received from ``ident``; put it in the Welcome."""
        return self.keys.open_session(ident)

    def close_session(self, ident: bytes) -> None:
        self.keys.forget(ident)

    def has_session(self, ident: bytes | None) -> bool:
        return ident in self.keys.sessions

    @property
    def fresh(self) -> bytes | None:
        """The peer whose session the last received message opened (its proof), or None."""
        return self.keys.fresh

    # --- messages -----------------------------------------------------------------------

    def send(
        self,
        msg: protocol.Message,
        frames: Sequence[Any] = (),
        *,
        to: bytes | None = None,
        flags: int = 0,
        sign: bool = True,
    ) -> None:
        """Send ``msg``; ``sign=False`` sends it unsigned (a refusal to a stranger)."""
        self.used = True
        self.keys.prepare(msg)
        sizes, physical = protocol.pack(frames)
        body = [protocol.encode(msg, sizes), *physical]
        sig = self.keys.seal(msg, body, to, sign)
        if sig is None:
            self._held.append((msg, frames, flags))
            return
        # Frame by frame with plain int flags: send_multipart builds a zmq.Flag
        # enum per frame. ZeroMQ still delivers the parts all or none. The
        # backend's send itself: pyzmq's Python wrapper only adds DRAFT options.
        sock = self.sock
        send = _send if self._native else _send_duck
        flags = int(flags)
        more = flags | _SNDMORE
        if to is not None:
            send(sock, to, more)
        send(sock, sig, more)
        if len(body) == 1:
            send(sock, body[0], flags)
            return
        last = len(body) - 1
        for i, frame in enumerate(body):
            # Small frames are copied either way; copy=False spares the big ones.
            send(sock, frame, more if i < last else flags, copy=i == 0)

    def readable(self) -> bool:
        """True if a message is waiting (ZMQ_EVENTS, asked by ``zmq_poll`` with no
        wait: the same look at the socket, which re-arms its fd as any operation
        does). A system call: a reactor that just polled the socket knows already."""
        self.used = True
        if self._native:
            return bool(_zmq_poll(self._poll_in, 0))
        return bool(int(self.sock.get(_EVENTS)) & _POLLIN)

    def recv(self, flags: int = 0) -> tuple[bytes | None, protocol.Message, list[Any]]:
        """Receive one message: (routing id or None, message, payload frames).

        Raises:
            zmq.Again: with NOBLOCK and nothing to read.
            Refused: garbage, a bad signature, a replay, a message over
                ``max_message``; the raw parts were consumed.
        """
        # Frame by frame: recv_multipart asks for RCVMORE (an enum) per frame.
        self.used = True
        recv = self.sock.recv
        ident: bytes | None = None
        if self.routed:
            # A ROUTER puts the sender's routing id before every message, always
            # with more to follow: taken as bytes, it needs no Frame of its own.
            ident = recv(flags)
        frame = recv(flags, copy=False)
        parts = [frame]
        while frame.more:
            frame = recv(flags, copy=False)
            parts.append(frame)
        if len(parts) < 2:
            bad = ProtocolError(f"message has {len(parts)} frames, expected 2 or more")
            trusted = self.keys.signer.key is None  # without a key, nobody is a stranger
            raise Refused(ident, bad, protocol.Error(protocol.ErrorCode.BAD_MESSAGE, str(bad)) if trusted else None)
        body = parts[1:]
        views = [p.buffer for p in body]
        keys = self.keys
        kind = keys.check(ident, parts[0].bytes, views)
        if self.max_message:
            size = sum(map(len, views))  # ZeroMQ frames' views are flat bytes: len is nbytes
            if size > self.max_message:
                error = MessageTooLargeError(
                    f"a message of {size} bytes exceeds the manager's limit of {self.max_message} bytes"
                )
                raise Refused(ident, error, protocol.Error(protocol.ErrorCode.TOO_LARGE, str(error), _ref(views[0])))
        try:
            msg, sizes = protocol.decode(views[0])
            frames = protocol.unpack(sizes, views[1:])
        except ProtocolError as exc:
            reply = protocol.Error(protocol.ErrorCode.BAD_MESSAGE, str(exc)) if kind == handshake.OK else None
            if reply is not None and isinstance(exc, protocol.VersionMismatch):
                reply.code = protocol.ErrorCode.VERSION
            raise Refused(ident, exc, reply) from None
        if isinstance(msg, protocol.Hello):
            try:
                self.peer_address = str(body[0].get("Peer-Address") or "")
            except (zmq.ZMQError, AttributeError):
                self.peer_address = ""
        if keys.admit(ident, kind, msg):
            self._welcomed()
        return ident, msg, frames

    def _welcomed(self) -> None:
        """The manager answered our Hello: prove the key, then send what waited."""
        self.send(protocol.Heartbeat())
        held, self._held = self._held, []
        for msg, frames, flags in held:
            self.send(msg, frames, flags=flags)

    def close(self) -> None:
        self.sock.close()


def _ref(header: Any) -> int:
    """The job a refused (too large) message names, read without trusting it: 0 if none."""
    try:
        obj = msgpack.unpackb(header, raw=False, **protocol.UNPACK_LIMITS)
    except Exception:  # msgpack raises several unrelated types
        return 0
    jobs = (protocol.DefineJob.TYPE, protocol.Submit.TYPE)
    if isinstance(obj, list) and len(obj) > 3 and obj[1] in jobs and type(obj[3]) is int:
        return obj[3]
    return 0


Refused = handshake.Refused
