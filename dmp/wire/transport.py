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

import zmq

from dmp import _config
from dmp.errors import AuthenticationError, ProtocolError
from dmp.wire import protocol

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

    def __init__(self, directory: str | None, *, server: bool, public: bytes | None = None) -> None:
        import zmq.auth

        if directory is None:  # a pinned public key (from a join token), no files
            if public is None or server:
                raise ValueError("a CURVE client needs the server's public key")
            self.public: bytes = public
            self.secret: bytes | None = None
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

    def apply(self, sock: zmq.Socket[Any]) -> None:
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
            sock.curve_serverkey = self.public


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


def make_socket(kind: int, *, identity: bytes | None = None) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = context().socket(kind)
    curve = _curve_settings()
    if curve is not None and kind in (zmq.ROUTER, zmq.DEALER):
        curve.apply(sock)
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


# Plain ints: the zmq enums cost an enum construction per use.
_SNDMORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
NOBLOCK = int(zmq.NOBLOCK)
# What a bind or connect raises for an unusable address (the CLI turns it into exit 2).
ZMQError = zmq.ZMQError

# Messages that may travel outside a session (signed with an empty nonce).
_SESSIONLESS = (protocol.Hello, protocol.Welcome, protocol.Error)
NONCE_BYTES = 16
# How much of a refused message's header is kept to say why (an Error is far smaller).
MAX_REFUSED_HEADER = 4096


class _SigningSession:
    """One signing session: its nonce and a counter each way."""

    __slots__ = ("nonce", "seen", "sent")

    def __init__(self, nonce: bytes) -> None:
        self.nonce = nonce
        self.sent = 0
        self.seen = 0


class Channel:
    """A socket that speaks dmp messages. Not thread-safe: one owner thread.

    ``routed`` channels (ROUTER) carry the peer's routing id as the first frame.

    With a key, every message carries ``counter (8 bytes) + HMAC-SHA256``
    over the session nonce, the counter and every frame with its length.
    Hello, Welcome and Error travel outside a session (empty nonce, counter
    0); the manager's Welcome carries a fresh nonce that signs everything
    after it, and each side accepts only increasing counters. A message
    captured from one session is therefore refused in any other, and
    refused again in its own. A DEALER holds back what it sends after Hello
    until the Welcome arrives.
    """

    __slots__ = ("_held", "peer_address", "routed", "sessions", "signer", "sock")

    def __init__(self, sock: zmq.Socket[Any], key: bytes | None) -> None:
        self.sock = sock
        self.signer = protocol.Signer(key)
        self.routed = sock.type == zmq.ROUTER
        self.sessions: dict[bytes | None, _SigningSession] = {}
        self._held: list[tuple[protocol.Message, Sequence[Any], int]] = []
        self.peer_address = ""  # IP of the sender of the last Hello received

    # --- sessions (manager side) --------------------------------------------------

    def open_session(self, ident: bytes) -> bytes:
        """A fresh nonce for peer ``ident``; put it in the Welcome."""
        if self.signer.key is None:
            return b""
        nonce = os.urandom(NONCE_BYTES)
        self.sessions[ident] = _SigningSession(nonce)
        return nonce

    def close_session(self, ident: bytes) -> None:
        self.sessions.pop(ident, None)

    def has_session(self, ident: bytes | None) -> bool:
        return ident in self.sessions

    # --- messages -----------------------------------------------------------------------

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
        if self.signer.key is None:
            sig = b""
        else:
            session = self.sessions.get(to)
            if isinstance(msg, _SESSIONLESS) or session is None:
                if not self.routed and isinstance(msg, protocol.Hello):
                    self.sessions.pop(None, None)  # a new session starts with the Welcome
                elif not self.routed and not isinstance(msg, _SESSIONLESS):
                    self._held.append((msg, frames, flags))
                    return
                nonce, counter = b"", 0
            else:
                session.sent += 1
                nonce, counter = session.nonce, session.sent
            count = counter.to_bytes(8, "little")
            sig = count + self.signer.sign(body, nonce + count)
        # Frame by frame with plain int flags: send_multipart builds a zmq.Flag
        # enum per frame. ZeroMQ still delivers the parts all or none.
        send = self.sock.send
        flags = int(flags)
        more = flags | _SNDMORE
        if to is not None:
            send(to, more)
        send(sig, more)
        last = len(body) - 1
        for i, frame in enumerate(body):
            # Small frames are copied either way; copy=False spares the big ones.
            send(frame, more if i < last else flags, copy=i == 0)

    def readable(self) -> bool:
        """True if a message is waiting. A system call: a reactor that just
        polled the socket knows already."""
        return bool(int(self.sock.get(_EVENTS)) & _POLLIN)

    def recv(self, flags: int = 0) -> tuple[bytes | None, protocol.Message, list[Any]]:
        """Receive one message: (routing id or None, message, payload frames).

        Raises:
            zmq.Again: with NOBLOCK and nothing to read.
            Refused: garbage, a bad signature, a replay; the raw parts were consumed.
        """
        # Frame by frame: recv_multipart asks for RCVMORE (an enum) per frame.
        recv = self.sock.recv
        frame = recv(flags, copy=False)
        parts = [frame]
        while frame.more:
            frame = recv(flags, copy=False)
            parts.append(frame)
        ident: bytes | None = None
        if self.routed:
            ident = parts[0].bytes
            parts = parts[1:]
        if len(parts) < 2:
            raise _Refused(ident, ProtocolError(f"message has {len(parts)} frames, expected 2 or more"))
        body = parts[1:]
        views = [p.buffer for p in body]
        sessionless = False
        if self.signer.key is not None:
            try:
                sessionless = self._verify(ident, parts[0].bytes, views)
            except _Refused as refused:
                refused.header = bytes(views[0][:MAX_REFUSED_HEADER])
                raise
        try:
            msg, sizes = protocol.decode(views[0])
            frames = protocol.unpack(sizes, views[1:])
        except ProtocolError as exc:
            raise _Refused(ident, exc) from None
        if isinstance(msg, protocol.Hello):
            try:
                self.peer_address = str(body[0].get("Peer-Address") or "")
            except (zmq.ZMQError, AttributeError):
                self.peer_address = ""
        if sessionless:
            if not isinstance(msg, _SESSIONLESS):
                raise _Refused(ident, AuthenticationError("message is not part of an authenticated session"))
            if not self.routed and isinstance(msg, protocol.Welcome):
                self._welcomed(msg.nonce)
        return ident, msg, frames

    def _verify(self, ident: bytes | None, raw: bytes, views: list[Any]) -> bool:
        """Check the signature; True if the message came outside any session."""
        if len(raw) != 8 + 32:
            raise _Refused(ident, Unsigned("message is not signed (does the peer have the authkey?)"))
        count = raw[:8]
        counter = int.from_bytes(count, "little")
        session = self.sessions.get(ident)
        if session is not None and counter > session.seen:
            if self.signer.verify(raw[8:], views, session.nonce + count):
                session.seen = counter
                return False
        if counter == 0 and self.signer.verify(raw[8:], views, count):
            return True
        raise _Refused(
            ident,
            AuthenticationError("message signature does not verify (wrong authkey, or a replayed or stale message)"),
        )

    def _welcomed(self, nonce: bytes) -> None:
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            return
        self.sessions[None] = _SigningSession(nonce)
        held, self._held = self._held, []
        for msg, frames, flags in held:
            self.send(msg, frames, flags=flags)

    def close(self) -> None:
        self.sock.close()


class Unsigned(AuthenticationError):
    """A message without any signature: its sender has no authkey (never a forgotten session)."""


class _Refused(Exception):
    """A received message was refused; carries who sent it and why."""

    def __init__(self, ident: bytes | None, error: Exception) -> None:
        super().__init__(str(error))
        self.ident = ident
        self.error = error
        self.header = b""  # the unverified header (at most MAX_REFUSED_HEADER bytes)

    def unverified_error(self) -> protocol.Error | None:
        """The refused message, if its header is an ``Error``: the manager's answer to a
        wrong key looks like this. Unverified, so only a hint (never a payload, never unpickled)."""
        try:
            msg, _ = protocol.decode(self.header)
        except (ProtocolError, ValueError, TypeError):
            return None
        return msg if isinstance(msg, protocol.Error) else None


Refused = _Refused
