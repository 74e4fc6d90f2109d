"""Framing of the direct route (dmp.wire.direct): whole messages out of a stream fed in any pieces."""

from __future__ import annotations

import struct

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
