"""Message authentication: an HMAC-SHA256 over a session context and every physical frame.

What the context holds (session nonce, direction, counter) and when a
signature is checked is ``dmp.wire.handshake``'s business; this module only
computes and compares MACs.

A frame of at least ``DIGEST_ABOVE`` bytes enters the MAC as its SHA-256
digest (hash-then-MAC), every other frame as its bytes. The digests of the
large frames of the messages last *verified* are remembered (by object identity, holding
the object, a few at a time), so the manager, which verifies a payload
frame and then forwards that same received frame object in another
session, hashes each large payload once per hop instead of twice. Frames
this process made itself are never remembered: a buffer its owner may
change between two sends is hashed each time.

hashlib and hmac (with OpenSSL's libcrypto) are imported on first use, by a
Signer with a key: a process that has none (a local pool) never loads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dmp import _lazy

# Frames this large enter the MAC as their SHA-256 digest.
DIGEST_ABOVE = 64 * 1024
# Digests remembered: at most this many frames, and no more bytes of frames
# than this kept alive by the memory (a larger frame is not remembered).
DIGESTS_KEPT = 16
DIGEST_BYTES_KEPT = 256 * 1024 * 1024

_hmac: Any = None  # the hmac module, imported by the first Signer with a key


def _sha256(frame: Any) -> Any:
    """hashlib's SHA-256 of a large frame: the payload pass (tests count its calls)."""
    import hashlib  # imported with hmac already (_import_hmac); tens of µs for the hash

    return hashlib.sha256(frame)


class Signer:
    """HMAC-SHA256 over the header and payload frames; a no-op without a key."""

    __slots__ = ("_digest_bytes", "_digests", "key", "remember")

    def __init__(self, key: bytes | None, *, remember: bool = False) -> None:
        self.key = key or None
        if self.key is not None and _hmac is None:
            _import_hmac()
        self.remember = remember
        # id(frame) -> (frame, its length, its SHA-256): the frame is held, so the id stays its own.
        self._digests: dict[int, tuple[Any, int, bytes]] = {}
        self._digest_bytes = 0

    def sign(self, frames: Sequence[bytes | memoryview | Any], context: bytes = b"") -> bytes:
        """MAC of ``context`` (session nonce and counter) and the frames."""
        return self._mac(frames, context, None)

    def verify(
        self, signature: bytes | memoryview, frames: Sequence[Any], context: bytes = b""
    ) -> bool:
        """True if ``signature`` is the MAC of the frames; then their digests are remembered."""
        if self.key is None:
            return True
        fresh: list[tuple[Any, int, bytes]] = []
        if not _hmac.compare_digest(bytes(signature), self._mac(frames, context, fresh)):
            return False
        if self.remember:
            for frame, n, value in fresh:
                self._remember(frame, n, value)
        return True

    def _mac(
        self, frames: Sequence[Any], context: bytes, fresh: list[tuple[Any, int, bytes]] | None
    ) -> bytes:
        key = self.key
        if key is None:
            return b""
        # One C call over the frames joined (what hmac's update would see in
        # turn: the same MAC): hmac.new plus an update per part cost more
        # interpreter work than copying a few small frames. Large frames enter
        # as their 32-byte digest, so the copy stays small.
        parts = [context]
        for frame in frames:
            # Each frame's length goes in first, so bytes cannot be moved
            # across a frame boundary without breaking the signature.
            n = frame.nbytes if isinstance(frame, memoryview) else len(frame)
            parts.append(n.to_bytes(8, "little"))
            parts.append(self.digest(frame, n, fresh) if n >= DIGEST_ABOVE else frame)
        # One-shot HMAC, computed in C.
        return _hmac.digest(key, b"".join(parts), "sha256")  # type: ignore[no-any-return]

    def digest(
        self, frame: Any, n: int, fresh: list[tuple[Any, int, bytes]] | None = None
    ) -> bytes:
        """SHA-256 of a large frame: once per received frame object while it is remembered
        (``fresh`` collects what had to be computed)."""
        known = self._digests.get(id(frame))
        if known is not None and known[0] is frame:
            if fresh is None:  # signed: forwarded once, forgotten
                del self._digests[id(frame)]
                self._digest_bytes -= n
            return known[2]
        value: bytes = _sha256(frame).digest()
        if fresh is not None:
            fresh.append((frame, n, value))
        return value

    def _remember(self, frame: Any, n: int, value: bytes) -> None:
        digests = self._digests
        if id(frame) in digests or n > DIGEST_BYTES_KEPT:
            return
        digests[id(frame)] = (frame, n, value)
        self._digest_bytes += n
        while len(digests) > DIGESTS_KEPT or self._digest_bytes > DIGEST_BYTES_KEPT:
            _, size, _ = digests.pop(next(iter(digests)))
            self._digest_bytes -= size


def _import_hmac() -> None:
    global _hmac
    _hmac = _lazy.load("hmac")  # with hashlib: no fork of this process meanwhile (see dmp._lazy)
