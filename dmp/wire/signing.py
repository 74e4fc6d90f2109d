"""Message authentication: an HMAC-SHA256 over a session context and every physical frame.

What the context holds (session nonce, direction, counter) and when a
signature is checked is ``dmp.wire.handshake``'s business; this module only
computes and compares MACs.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any


class Signer:
    """HMAC-SHA256 over the header and payload frames; a no-op without a key."""

    __slots__ = ("key",)

    def __init__(self, key: bytes | None) -> None:
        self.key = key or None

    def sign(self, frames: Sequence[bytes | memoryview | Any], context: bytes = b"") -> bytes:
        """MAC of ``context`` (session nonce and counter) and the frames."""
        if self.key is None:
            return b""
        mac = hmac.new(self.key, context, digestmod=hashlib.sha256)
        for frame in frames:
            # Each frame's length goes in first, so bytes cannot be moved
            # across a frame boundary without breaking the signature.
            n = frame.nbytes if isinstance(frame, memoryview) else len(frame)
            mac.update(n.to_bytes(8, "little"))
            mac.update(frame)
        return mac.digest()

    def verify(self, signature: bytes | memoryview, frames: Sequence[Any], context: bytes = b"") -> bool:
        if self.key is None:
            return True
        return hmac.compare_digest(bytes(signature), self.sign(frames, context))
