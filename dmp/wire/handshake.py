"""Who may talk: the mutual challenge that opens a session, and the signing of every message in it.

Every peer (client, node, worker, object host, ``dmp status``) and the
manager run this one handshake, through :class:`dmp.wire.transport.Channel`::

    peer    --Hello(nonce=Nc)      signed outside any session (counter 0)--> manager
    manager --Welcome(nonce=Ns)    signed over Nc (an answer to *this* Hello)--> peer
    peer    --Heartbeat            signed in session Nc+Ns, counter 1-->     manager

Each side's nonce is fresh and its own, so each side has proved the key to
the other: the peer verifies the Welcome against the challenge it just made
(a captured Welcome answers some other Hello), and the manager admits the
peer only on its first message signed with Ns (a captured Hello gets a
Welcome its sender cannot use). Every later message is signed with
``Nc + Ns``, its direction and a counter that rises with each message:
nothing captured from one connection is accepted on another, nor twice on
its own. The manager signs nothing outside a session except the answer to a
verified Hello; everyone else gets, at most, an unsigned ``Error``.
"""

from __future__ import annotations

import os
from typing import Any

from dmp.errors import AuthenticationError
from dmp.wire import protocol

NONCE_BYTES = 16
SIG_BYTES = 8 + 32
TO_MANAGER = b"P"  # a peer's messages
TO_PEER = b"M"  # the manager's messages
# Handshakes the manager holds open at once (a Welcome sent, no proof yet);
# past it the oldest is dropped: a Hello flood costs bounded memory (about
# 1 KiB each with the manager's note of the Hello, so 16 MiB at most). Only
# a Hello signed with the key (or a replayed one) takes a place; room for a
# cluster of 100 nodes x 50 workers joining at once, three times over.
MAX_PENDING = 16384

OK = 0  # verified in a session (or no key at all)
HELLO = 1  # manager: a validly signed Hello, possibly replayed: not yet trusted
ANSWER = 2  # peer: the manager's answer to our outstanding Hello
UNSIGNED = 3  # peer: unsigned; only an Error that can do no harm passes

NOT_SIGNED = "message is not signed: the manager requires an authkey"
WRONG_KEY = "the authkey does not match the manager's"
STALE = "message signature does not verify in this session (replayed, stale or forged)"
NO_SESSION = "message is not part of an authenticated session (say Hello)"


class SigningSession:
    """One authenticated conversation: its nonce (Nc + Ns) and a counter each way."""

    __slots__ = ("nonce", "seen", "sent")

    def __init__(self, nonce: bytes) -> None:
        self.nonce = nonce
        self.sent = 0
        self.seen = 0


class Refused(Exception):
    """A received message was refused; carries who sent it, why, and what
    (if anything) to answer: an unsigned ``Error`` for strangers."""

    def __init__(self, ident: bytes | None, error: Exception, reply: protocol.Error | None = None) -> None:
        super().__init__(str(error))
        self.ident = ident
        self.error = error
        self.reply = reply

    def unverified_error(self) -> protocol.Error | None:
        """Kept for callers of the old transport: the handshake lets the
        manager's unsigned refusal through as a message, so never anything."""
        return None


class Keyring:
    """The sessions of one channel, and the signing and checking of its messages."""

    __slots__ = ("answer", "challenge", "fresh", "pending", "routed", "sessions", "signer")

    def __init__(self, key: bytes | None, routed: bool) -> None:
        # Only the manager forwards what it receives: only it remembers payload digests.
        self.signer = protocol.Signer(key, remember=routed)
        self.routed = routed
        self.sessions: dict[bytes | None, SigningSession] = {}
        self.pending: dict[bytes, SigningSession] = {}  # manager: Welcome sent, no proof yet
        self.answer: dict[bytes, bytes] = {}  # manager: Nc of a verified Hello not yet answered
        self.challenge: bytes | None = None  # peer: Nc of our outstanding Hello
        self.fresh: bytes | None = None  # manager: the ident the last message authenticated

    # --- manager side -----------------------------------------------------------------

    def open_session(self, ident: bytes) -> bytes:
        """Our nonce Ns for the Hello just received from ``ident``; put it in the Welcome.
        The session counts only once the peer proves it (see :attr:`fresh`)."""
        nc = self.answer.get(ident)
        if self.signer.key is None or nc is None:
            return b""
        ns = os.urandom(NONCE_BYTES)
        self.pending.pop(ident, None)
        self.pending[ident] = SigningSession(nc + ns)
        while len(self.pending) > MAX_PENDING:
            del self.pending[next(iter(self.pending))]
        return ns

    def forget(self, ident: bytes) -> None:
        self.sessions.pop(ident, None)
        self.pending.pop(ident, None)
        self.answer.pop(ident, None)

    # --- sending ------------------------------------------------------------------------

    def prepare(self, msg: protocol.Message) -> None:
        """Before encoding: a peer's Hello names our versions, carries a fresh
        challenge, and ends its session."""
        if isinstance(msg, protocol.Hello) and not msg.version:
            msg.version = protocol.software_version()
        if self.signer.key is not None and not self.routed and isinstance(msg, protocol.Hello):
            self.challenge = os.urandom(NONCE_BYTES)
            msg.nonce = self.challenge
            self.sessions.pop(None, None)

    def seal(self, msg: protocol.Message, body: list[Any], to: bytes | None, sign: bool = True) -> bytes | None:
        """The signature frame for ``body``; None: hold the message until the session opens."""
        if self.signer.key is None or not sign:
            return b""
        if self.routed:
            assert to is not None
            session = self.sessions.get(to)
            if isinstance(msg, protocol.Welcome) or (isinstance(msg, protocol.Error) and to in self.answer):
                nc = self.answer.pop(to, None)
                if nc is None:
                    return b""
                return self._sign(body, nc, TO_PEER, 0)
            if session is None:
                return b""  # nobody we trust: nothing signed
            session.sent += 1
            return self._sign(body, session.nonce, TO_PEER, session.sent)
        if isinstance(msg, protocol.Hello):
            return self._sign(body, b"", TO_MANAGER, 0)
        session = self.sessions.get(None)
        if session is None:
            return None
        session.sent += 1
        return self._sign(body, session.nonce, TO_MANAGER, session.sent)

    def _sign(self, body: list[Any], nonce: bytes, direction: bytes, counter: int) -> bytes:
        count = counter.to_bytes(8, "little")
        return count + self.signer.sign(body, nonce + direction + count)

    # --- receiving ------------------------------------------------------------------------

    def check(self, ident: bytes | None, raw: bytes, views: list[Any]) -> int:
        """Verify a signature before anything else is looked at: OK, HELLO, ANSWER or UNSIGNED.

        Raises:
            Refused: a bad signature, a replay, or an unsigned message to a manager.
        """
        self.fresh = None
        if self.signer.key is None:
            return OK
        if len(raw) != SIG_BYTES:
            if self.routed:
                raise Refused(ident, AuthenticationError(NOT_SIGNED), protocol.Error(protocol.ErrorCode.AUTH, NOT_SIGNED))
            return UNSIGNED
        count = raw[:8]
        counter = int.from_bytes(count, "little")
        mac = raw[8:]
        verify = self.signer.verify
        if self.routed:
            assert ident is not None
            session = self.sessions.get(ident)
            if session is not None and counter > session.seen and verify(mac, views, session.nonce + TO_MANAGER + count):
                session.seen = counter
                return OK
            pending = self.pending.get(ident)
            if pending is not None and counter > 0 and verify(mac, views, pending.nonce + TO_MANAGER + count):
                del self.pending[ident]
                pending.seen = counter
                self.sessions[ident] = pending
                self.fresh = ident
                return OK
            if counter == 0 and verify(mac, views, TO_MANAGER + count):
                return HELLO
            if counter == 0:
                raise Refused(ident, AuthenticationError(WRONG_KEY), protocol.Error(protocol.ErrorCode.AUTH, WRONG_KEY))
            if session is not None or pending is not None:
                raise Refused(ident, AuthenticationError(STALE), protocol.Error(protocol.ErrorCode.AUTH, STALE))
            raise Refused(ident, AuthenticationError(NO_SESSION), protocol.Error(protocol.ErrorCode.UNKNOWN_PEER, NO_SESSION))
        session = self.sessions.get(None)
        if session is not None and counter > session.seen and verify(mac, views, session.nonce + TO_PEER + count):
            session.seen = counter
            return OK
        if self.challenge is not None and counter == 0 and verify(mac, views, self.challenge + TO_PEER + count):
            return ANSWER
        raise Refused(ident, AuthenticationError("message from the manager does not verify (wrong authkey, or replayed)"))

    def admit(self, ident: bytes | None, kind: int, msg: protocol.Message) -> bool:
        """After decoding: may this message pass? True if a peer's session just opened.

        Raises:
            Refused: the message may not travel the way it came.
        """
        if kind == OK:
            if self.signer.key is not None and isinstance(msg, (protocol.Hello, protocol.Welcome)):
                raise Refused(ident, AuthenticationError(f"a {type(msg).__name__} inside a session"))
            return False
        if kind == HELLO:
            if not isinstance(msg, protocol.Hello) or len(msg.nonce) != NONCE_BYTES:
                raise Refused(ident, AuthenticationError(NO_SESSION))
            assert ident is not None
            self.answer.pop(ident, None)
            self.answer[ident] = msg.nonce
            while len(self.answer) > MAX_PENDING:
                del self.answer[next(iter(self.answer))]
            return False
        if kind == ANSWER:
            assert self.challenge is not None
            if isinstance(msg, protocol.Welcome) and len(msg.nonce) == NONCE_BYTES:
                self.sessions[None] = SigningSession(self.challenge + msg.nonce)
                self.challenge = None
                return True
            if isinstance(msg, protocol.Error):
                self.challenge = None
                return False
            raise Refused(ident, AuthenticationError(f"an unexpected {type(msg).__name__} answered our Hello"))
        # Unsigned, to a peer: only "say Hello again" or, while we wait for a
        # Welcome, "your key is wrong or missing" (nothing else is believed).
        if isinstance(msg, protocol.Error) and (
            msg.code == protocol.ErrorCode.UNKNOWN_PEER
            or (msg.code == protocol.ErrorCode.AUTH and self.challenge is not None)
        ):
            return False
        raise Refused(ident, AuthenticationError("message from the manager is not signed (does it have the authkey?)"))
