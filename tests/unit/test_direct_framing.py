"""Framing of the direct route (dmp.wire.direct): whole messages out of a stream fed in any pieces."""

from __future__ import annotations

import os
import socket
import struct
import threading

import pytest

from dmp.errors import ProtocolError
from dmp.wire import direct, protocol


def _wire(msg: protocol.Message, frames: list[bytes]) -> bytes:
    return b"".join(bytes(b) for b in direct.encode(msg, frames))


def test_messages_survive_any_split() -> None:
    big = bytes(range(256)) * 300  # over the pack limit: still one payload
    stream = _wire(protocol.ObjCall(1, 7, "__setitem__"), [b"abc", big]) + _wire(
        protocol.ObjReply(1, 0), []
    )
    for step in (1, 5, 4096, len(stream)):
        reader, got = direct.Reader(), []
        for i in range(0, len(stream), step):
            reader.feed(stream[i : i + step])
            while (whole := reader.next()) is not None:
                got.append(direct.decode(whole))
        (call, frames), (reply, none) = got
        assert isinstance(call, protocol.ObjCall) and (call.oid, call.method) == (7, "__setitem__")
        assert [bytes(f) for f in frames] == [b"abc", big]
        assert isinstance(reply, protocol.ObjReply) and none == []


def test_oversized_and_mismatched_messages_are_refused() -> None:
    reader = direct.Reader()
    reader.feed(struct.pack("<IQ", 16, direct.MAX_MESSAGE_BYTES))
    with pytest.raises(direct.DirectError, match="limit"):
        reader.next()
    header = protocol.encode(protocol.ObjCall(1, 7, "x"), [5])
    lying = (
        struct.pack("<IQ", len(header), 3) + header + b"abc"
    )  # says 5 bytes of payload, carries 3
    reader = direct.Reader()
    reader.feed(lying)
    whole = reader.next()
    assert whole is not None
    with pytest.raises(ProtocolError, match="layout"):
        direct.decode(whole)


def test_addresses() -> None:
    address = direct.new_address()
    assert address.startswith(direct.PREFIX) and direct.sockaddr(address).startswith("\0")
    with pytest.raises(direct.DirectError):
        direct.sockaddr("tcp://127.0.0.1:1")


def _read_all(reader: direct.Reader, sock: socket.socket, want: int) -> list[tuple[protocol.Message, list[bytes]]]:
    got: list[tuple[protocol.Message, list[bytes]]] = []
    while len(got) < want:
        if not reader.recv_from(sock, 4096):
            raise AssertionError("EOF before every message came")
        while (whole := reader.next()) is not None:
            msg, frames = direct.decode(whole)
            got.append((msg, [bytes(f) for f in frames]))
    return got


@pytest.mark.parametrize("kept", [False, True])
def test_recv_from_reads_large_messages_into_their_own_buffer(kept: bool) -> None:
    big = os.urandom(direct.DIRECT_ABOVE + 12345)
    other = os.urandom(direct.DIRECT_ABOVE * 2)
    stream = (
        _wire(protocol.ObjReply(1, 0), [b"small"])  # a small one, then a large one in the same read
        + _wire(protocol.ObjCall(2, 7, "big"), [b"head", big])
        + _wire(protocol.ObjCall(3, 7, "next"), [other])  # a large one right after a large one
        + _wire(protocol.ObjReply(4, 0), [])
    )
    ours, theirs = socket.socketpair()
    with ours, theirs:
        writer = threading.Thread(target=ours.sendall, args=(stream,))
        writer.start()
        reader = direct.Reader(kept=kept)
        got = _read_all(reader, theirs, 4)
        writer.join(timeout=30)
        ours.shutdown(socket.SHUT_WR)
        assert reader.recv_from(theirs, 4096) == 0  # EOF, not an empty read of a finished buffer
    assert [type(m).__name__ for m, _ in got] == ["ObjReply", "ObjCall", "ObjCall", "ObjReply"]
    assert got[1][1] == [b"head", big] and got[2][1] == [other] and got[0][1] == [b"small"]


def test_recv_from_refuses_an_oversized_claim_before_allocating() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.sendall(struct.pack("<IQ", 16, direct.MAX_MESSAGE_BYTES))
        reader = direct.Reader()
        reader.recv_from(theirs, 4096)
        with pytest.raises(direct.DirectError, match="limit"):
            reader.recv_from(theirs, 4096)


def test_recv_from_reads_on_past_a_finished_large_message() -> None:
    """Several reads before the messages are taken (as the manager's pipes do): a
    finished large message does not stop the reads that follow it."""
    big = os.urandom(direct.DIRECT_ABOVE)
    stream = _wire(protocol.ObjCall(1, 7, "big"), [big]) + _wire(protocol.ObjReply(2, 0), [b"after"])
    ours, theirs = socket.socketpair()
    with ours, theirs:
        writer = threading.Thread(target=ours.sendall, args=(stream,))
        writer.start()
        reader, read = direct.Reader(), 0
        while read < len(stream):
            n = reader.recv_from(theirs, 4096)
            assert n > 0
            read += n
        writer.join(timeout=30)
    got = []
    while (whole := reader.next()) is not None:
        got.append(direct.decode(whole))
    assert [type(m).__name__ for m, _ in got] == ["ObjCall", "ObjReply"]
    assert bytes(got[0][1][0]) == big and bytes(got[1][1][0]) == b"after"
