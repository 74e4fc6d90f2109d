"""dmp.wire.codec.decode's hand-written checks for the usual headers (a layout of one
size, one or two fields) accept and refuse exactly what the general checks do.

The reference below is decode's checks as they were before those shortcuts: the
layout through ``frozenset.issuperset(map(type, ...))`` and ``min``, the field
shape through ``tuple(map(type, ...))``. Both run on the same generated headers,
well formed or not; each must give the same message and layout, or the same
ProtocolError (type and text).
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmp.errors import ProtocolError
from dmp.wire import codec, protocol

pytestmark = pytest.mark.timeout(120)

_JUST_INT = frozenset({int})


def _reference(header: bytes) -> tuple[protocol.Message, list[int]]:
    """decode with the general checks only (codec.decode before the shortcuts)."""
    obj = codec._unpack(header)
    if not isinstance(obj, list) or len(obj) < 3:
        raise ProtocolError("header is not a [version, type, sizes, ...] array")
    version, code = obj[0], obj[1]
    if type(version) is not int or version != codec.PROTOCOL_VERSION:
        raise codec.VersionMismatch(
            f"peer speaks dmp protocol version {version!r}, this side speaks {codec.PROTOCOL_VERSION}"
        )
    cls = codec._REGISTRY.get(code) if type(code) is int else None
    if cls is None:
        raise ProtocolError(f"unknown message type {code!r}")
    sizes = obj[2]
    if type(sizes) is not list or not _JUST_INT.issuperset(map(type, sizes)) or (sizes and min(sizes) < -1):
        raise ProtocolError("header's payload layout is not a list of sizes")
    args = obj[3:]
    codec._check_fields(cls, code, args)  # what a shape not yet known goes through
    try:
        return cls(*args), sizes
    except TypeError as exc:
        raise ProtocolError(f"malformed {cls.__name__}: {exc}") from None


def _outcome(fn: Any, header: bytes) -> tuple[str, Any]:
    try:
        msg, sizes = fn(header)
    except ProtocolError as exc:
        return "refused", (type(exc), str(exc))
    return "decoded", (type(msg), msg.fields(), sizes, [type(s) for s in sizes])


_HOT = [protocol.Submit, protocol.Dispatch, protocol.TaskDone, protocol.JobResults]
_codes = st.sampled_from([c.TYPE for c in _HOT]) | st.sampled_from(
    sorted(c.TYPE for c in protocol.message_types().values())
)
_size = st.integers(-3, 2**33) | st.sampled_from([-1, 0, True, False, 1.0, -1.5, "1", b"\x01", None, [1], {"a": 1}])
_sizes = st.lists(_size, max_size=3) | st.sampled_from([None, 3, "x", {"a": 1}, b""])
_leaf = st.none() | st.booleans() | st.integers(-2, 2**40) | st.floats(allow_nan=False) | st.text(max_size=4) | st.binary(max_size=4)
_field = _leaf | st.lists(_leaf | st.lists(_leaf, max_size=6), max_size=3) | st.dictionaries(st.text(max_size=3), _leaf, max_size=2)


@settings(max_examples=3000, deadline=None)
@given(code=_codes, sizes=_sizes, fields=st.lists(_field, max_size=4))
def test_decode_agrees_with_the_general_checks(code: int, sizes: Any, fields: list[Any]) -> None:
    header = msgpack.packb([codec.PROTOCOL_VERSION, code, sizes, *fields], use_bin_type=True)
    assert _outcome(codec.decode, header) == _outcome(_reference, header)


@settings(max_examples=500, deadline=None)
@given(
    msg=st.sampled_from(
        [
            protocol.Submit(3, [[17, 1]]),
            protocol.Dispatch([[9, 1, 0.0]], [[100, 9, 0, 1]]),
            protocol.Dispatch([], [[100, 9, 0, 1]]),
            protocol.TaskDone([[100, 0, 0, 1, 0.25, ""]]),
            protocol.JobResults([[3, 1, 0, 1, ""]]),
        ]
    ),
    sizes=st.lists(st.integers(-2, 2**32), max_size=3),
)
def test_hot_messages_decode_alike(msg: protocol.Message, sizes: list[int]) -> None:
    header = codec.encode(msg, sizes)
    got = _outcome(codec.decode, header)
    assert got == _outcome(_reference, header)
    if all(s >= -1 for s in sizes):
        assert got == ("decoded", (type(msg), msg.fields(), sizes, [int] * len(sizes)))


@pytest.mark.parametrize(
    "sizes",
    [[-2], [True], [1.0], ["1"], [None], [[1]], [2**64 - 1], [-(2**63)]],
    ids=["below-minus-one", "bool", "float", "str", "nil", "list", "uint64", "most-negative"],
)
def test_a_single_size_is_checked_as_a_layout_of_many(sizes: list[Any]) -> None:
    """One size goes through the hand-written check; many through the C one: same verdicts."""
    for layout in (sizes, [*sizes, 1], [1, *sizes]):
        header = msgpack.packb([codec.PROTOCOL_VERSION, protocol.TaskDone.TYPE, layout, []], use_bin_type=True)
        assert _outcome(codec.decode, header) == _outcome(_reference, header)
