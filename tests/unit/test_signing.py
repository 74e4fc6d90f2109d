"""dmp.wire.signing: large frames are signed by their SHA-256, hashed once per received frame."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

from dmp.wire import signing
from dmp.wire.signing import DIGEST_ABOVE, Signer

pytestmark = pytest.mark.timeout(30)

KEY = b"secret"
BIG = DIGEST_ABOVE + 7


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the frames the signer hashed on their own (the payload pass)."""
    seen: list[int] = []

    def counting(data: Any) -> Any:
        seen.append(memoryview(data).nbytes)
        return hashlib.sha256(data)

    monkeypatch.setattr(signing, "_sha256", counting)
    return seen


def test_a_large_frame_verifies_from_any_copy_and_not_when_changed() -> None:
    payload = os.urandom(BIG)
    sig = Signer(KEY).sign([b"header", payload], b"ctx")
    assert Signer(KEY).verify(sig, [b"header", memoryview(bytearray(payload))], b"ctx")
    tampered = bytearray(payload)
    tampered[BIG // 2] ^= 1
    assert not Signer(KEY).verify(sig, [b"header", tampered], b"ctx")
    assert not Signer(KEY).verify(sig, [b"header", payload[:-1]], b"ctx")
    assert not Signer(KEY).verify(sig, [b"header", payload], b"other context")
    assert not Signer(b"other").verify(sig, [b"header", payload], b"ctx")


def test_small_and_large_frames_are_bound_to_their_boundaries() -> None:
    payload = os.urandom(BIG)
    sig = Signer(KEY).sign([b"header", payload, b"tail"])
    assert not Signer(KEY).verify(sig, [b"header", payload + b"t", b"ail"])
    assert not Signer(KEY).verify(sig, [b"header" + payload[:1], payload[1:], b"tail"])


def test_a_received_frame_forwarded_is_hashed_once(hashed: list[int]) -> None:
    """What the manager does: verify in the sender's session, sign the same frame in the receiver's."""
    sender, manager, receiver = Signer(KEY), Signer(KEY, remember=True), Signer(KEY)
    frames: list[Any] = [b"header", memoryview(os.urandom(BIG))]
    sig = sender.sign(frames, b"session 1")
    received = [memoryview(bytes(f)) for f in frames]  # the manager's own frame objects
    hashed.clear()
    assert manager.verify(sig, received, b"session 1")
    forwarded = manager.sign([b"new header", received[1]], b"session 2")
    assert hashed == [BIG]  # one pass for both
    assert receiver.verify(forwarded, [b"new header", memoryview(bytes(received[1]))], b"session 2")
    assert manager._digests == {} and manager._digest_bytes == 0  # forwarded once: forgotten
    hashed.clear()
    manager.sign([received[1]], b"session 3")
    assert hashed == [BIG]


def test_peers_that_do_not_forward_remember_nothing(hashed: list[int]) -> None:
    signer = Signer(KEY)
    frame = memoryview(os.urandom(BIG))
    assert signer.verify(Signer(KEY).sign([frame]), [frame])
    assert signer._digests == {}


def test_frames_made_here_are_hashed_every_time(hashed: list[int]) -> None:
    """A buffer its owner may change between two sends is never remembered."""
    signer = Signer(KEY)
    data = bytearray(BIG)
    view = memoryview(data)
    first = signer.sign([view])
    data[0] = 1
    second = signer.sign([view])
    assert hashed == [BIG, BIG] and first != second
    assert Signer(KEY).verify(second, [bytes(data)])


def test_small_frames_are_never_hashed_on_their_own(hashed: list[int]) -> None:
    signer = Signer(KEY)
    sig = signer.sign([b"header", b"x" * (DIGEST_ABOVE - 1)])
    assert signer.verify(sig, [b"header", b"x" * (DIGEST_ABOVE - 1)])
    assert hashed == []


def test_remembered_digests_are_bounded_in_count_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = Signer(KEY, remember=True)
    frames = [memoryview(os.urandom(BIG)) for _ in range(signing.DIGESTS_KEPT + 5)]
    for frame in frames:
        assert signer.verify(Signer(KEY).sign([frame]), [frame])
    assert len(signer._digests) == signing.DIGESTS_KEPT
    assert all(signer._digests[id(f)][0] is f for f in frames[-signing.DIGESTS_KEPT :])
    monkeypatch.setattr(signing, "DIGEST_BYTES_KEPT", 2 * BIG)
    big = memoryview(os.urandom(3 * BIG))
    assert signer.verify(Signer(KEY).sign([big]), [big])
    assert id(big) not in signer._digests  # larger than the whole memory: not remembered
    two = [memoryview(os.urandom(BIG)) for _ in range(2)]
    assert signer.verify(Signer(KEY).sign(two), two)
    assert list(signer._digests) == [id(f) for f in two] and signer._digest_bytes == 2 * BIG


def test_a_message_that_fails_to_verify_leaves_nothing_remembered() -> None:
    """A stranger's large frames are not kept alive by the memory of digests."""
    signer = Signer(KEY, remember=True)
    frame = memoryview(os.urandom(BIG))
    assert not signer.verify(Signer(b"other").sign([frame]), [frame])
    assert signer._digests == {} and signer._digest_bytes == 0
