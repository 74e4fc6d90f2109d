"""dmp.wire.protocol: header encode/decode, pack/unpack, Signer; no sockets."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmp.errors import ProtocolError
from dmp.wire import protocol
from dmp.wire.protocol import (
    PACK_LIMIT,
    PROTOCOL_VERSION,
    Signer,
    count_frames,
    decode,
    encode,
    pack,
    unpack,
)

pytestmark = pytest.mark.timeout(60)

SAMPLES: dict[str, protocol.Message] = {
    "Hello": protocol.Hello("worker", "w-1", "box", 4242, "dmp 0.1.0, Python 3.12", b"", 0, "node-a", 10),
    "Welcome": protocol.Welcome("77-31", 1.5),
    "Heartbeat": protocol.Heartbeat(),
    "Bye": protocol.Bye("manager shutting down"),
    "Error": protocol.Error(protocol.ErrorCode.UNKNOWN_JOB, "unknown job 7", 7),
    "DefineJob": protocol.DefineJob(3, 2, 5),
    "Submit": protocol.Submit(3, [[1, 1], [2, 0], [3, 2]]),
    "EndJob": protocol.EndJob(3),
    "CancelJob": protocol.CancelJob(3),
    "Dispatch": protocol.Dispatch([[9, 1, 0.0]], [[100, 9, 0, 1], [101, 9, 2, 1]]),
    "TaskDone": protocol.TaskDone([[100, 0, 0, 1, 0.25, ""], [101, 2, 1, 2, 0.0, ""]]),
    "JobResults": protocol.JobResults([[3, 1, 0, 1, ""], [3, 2, 2, 0, ["pid 7 died", "node-a", 7, -9]]]),
    "ForgetJobs": protocol.ForgetJobs([9, 10]),
    "TaskOutput": protocol.TaskOutput(100, "stdout", "hello\n", "node-a:4242"),
    "JobOutput": protocol.JobOutput(3, 1, "stdout", "hello\n", "node-a:4242"),
    "WorkerExited": protocol.WorkerExited("w-1", 4242, -9, 100),
    "StatusRequest": protocol.StatusRequest(),
    "StatusReply": protocol.StatusReply({"slots": 8, "nodes": [{"name": "a", "busy": 1}]}),
    "TaskStarted": protocol.TaskStarted(100, 4242, "node-a"),
    "JobTaskStarted": protocol.JobTaskStarted(3, 1, 4242, "node-a"),
    "SignalJob": protocol.SignalJob(3, 15),
    "SignalWorker": protocol.SignalWorker("node-a/1-1", 4242, 9, [100, 103]),
    "WorkerSpared": protocol.WorkerSpared("node-a/1-1", 4242, 101),
}


# --- shared objects (issue 3) ---
SAMPLES.update({
    "ObjCreate": protocol.ObjCreate(1, "Queue", "Queue", [10]),
    "ObjCall": protocol.ObjCall(2, 5, "get", [], 0.5, 140234),
    "ObjReply": protocol.ObjReply(2, protocol.ObjStatus.FAILED, ["Empty", ""], 0),
    "ObjRelease": protocol.ObjRelease([5, 6]),
    "HostReady": protocol.HostReady(4242),
    "HostCall": protocol.HostCall(9, 5, "__getitem__", ""),
    "HostReply": protocol.HostReply(9, protocol.ObjStatus.OK, ["dict", ["get"]], "dict", [7]),
    "HostDrop": protocol.HostDrop([5]),
    "ObjCancel": protocol.ObjCancel(2),
})


def _header(*parts: Any) -> bytes:
    out: bytes = msgpack.packb(list(parts), use_bin_type=True)
    return out


def _views(frames: list[Any]) -> list[memoryview]:
    return [memoryview(f) for f in frames]


# --- encode / decode ----------------------------------------------------------


def test_samples_cover_every_message_type() -> None:
    assert set(SAMPLES) == set(protocol.message_types())
    for name, msg in SAMPLES.items():
        assert type(msg).__name__ == name


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip_every_type(name: str) -> None:
    msg = SAMPLES[name]
    sizes = [3, -1, 0]
    got, got_sizes = decode(encode(msg, sizes))
    assert type(got) is type(msg)
    assert got == msg
    assert got.fields() == msg.fields()
    assert got_sizes == sizes


def test_round_trip_without_sizes_and_from_memoryview() -> None:
    got, sizes = decode(memoryview(encode(SAMPLES["Hello"])))
    assert got == SAMPLES["Hello"] and sizes == []


def test_header_layout_is_version_type_sizes_fields() -> None:
    msg = SAMPLES["WorkerExited"]
    raw = msgpack.unpackb(encode(msg, [5]), raw=False)
    assert raw == [PROTOCOL_VERSION, 20, [5], "w-1", 4242, -9, 100, 0, {}]


def test_trailing_defaults_may_be_left_off() -> None:
    got, _ = decode(_header(PROTOCOL_VERSION, protocol.Hello.TYPE, [], "client", "c", "h", 1))
    assert got == protocol.Hello("client", "c", "h", 1)


def test_codes_are_unique_and_registered() -> None:
    types = protocol.message_types()
    codes = [cls.TYPE for cls in types.values()]
    assert len(codes) == len(set(codes))
    with pytest.raises(RuntimeError):
        protocol.message(protocol.Hello.TYPE, ("client",), ("manager",))(type("Dup", (protocol.Message,), {}))


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, 99])
def test_version_mismatch_names_both_versions(version: int) -> None:
    header = _header(version, protocol.Heartbeat.TYPE, [])
    with pytest.raises(ProtocolError) as info:
        decode(header)
    text = str(info.value)
    assert str(version) in text and str(PROTOCOL_VERSION) in text
    assert "version" in text


def test_boolean_version_is_refused() -> None:
    with pytest.raises(ProtocolError):
        decode(_header(True, protocol.Heartbeat.TYPE, []))


def test_a_bool_field_takes_only_a_bool() -> None:
    ok = decode(_header(protocol.PROTOCOL_VERSION, protocol.DefineJob.TYPE, [], 1, 0, 3, 0.0, {}, True))
    assert ok[0] == protocol.DefineJob(1, 0, 3, 0.0, {}, True)
    with pytest.raises(ProtocolError, match="idle_only must be bool, not int"):
        decode(_header(protocol.PROTOCOL_VERSION, protocol.DefineJob.TYPE, [], 1, 0, 3, 0.0, {}, 1))


def test_a_known_field_shape_still_refuses_wrong_types() -> None:
    """The decoder remembers field-type shapes that passed; a wrong one is still checked, every time."""
    good = _header(protocol.PROTOCOL_VERSION, protocol.DefineJob.TYPE, [], 1, 0, 3, 0.0, {}, True)
    bad = _header(protocol.PROTOCOL_VERSION, protocol.DefineJob.TYPE, [], 1, 0, 3, 0.0, {}, 1)
    for _ in range(3):
        assert decode(good)[0] == protocol.DefineJob(1, 0, 3, 0.0, {}, True)
        with pytest.raises(ProtocolError, match="idle_only must be bool, not int"):
            decode(bad)
    too_many = _header(protocol.PROTOCOL_VERSION, protocol.EndJob.TYPE, [], 1, 2)
    for _ in range(2):
        with pytest.raises(ProtocolError, match="EndJob has 2 fields, expected 1"):
            decode(too_many)


def test_signature_is_hmac_sha256_over_lengths_and_frames() -> None:
    """The one-shot MAC is the one the protocol doc describes: context, then each frame's length and bytes
    (its SHA-256 from 64 KiB on)."""
    import hashlib
    import hmac

    frames: list[Any] = [b"header", memoryview(b"x" * (64 * 1024)), bytearray(b"yy"), b""]
    mac = hmac.new(b"secret", b"ctx", hashlib.sha256)
    for f in frames:
        n = len(f) if not isinstance(f, memoryview) else f.nbytes
        mac.update(n.to_bytes(8, "little"))
        mac.update(hashlib.sha256(f).digest() if n >= 64 * 1024 else f)
    assert Signer(b"secret").sign(frames, b"ctx") == mac.digest()


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="reserved-byte"),
        pytest.param(b"\x93\x01", id="truncated"),
        pytest.param(_header(PROTOCOL_VERSION, 3, []) + b"\x00", id="trailing-bytes"),
        pytest.param(b"not msgpack at all \xff\xfe", id="garbage"),
        pytest.param(msgpack.packb({"v": 1}), id="map"),
        pytest.param(msgpack.packb(7), id="int"),
        pytest.param(msgpack.packb("hello"), id="str"),
        pytest.param(_header(PROTOCOL_VERSION, 3), id="short-array"),
        pytest.param(_header(), id="empty-array"),
        pytest.param(_header(PROTOCOL_VERSION, 999, []), id="unknown-code"),
        pytest.param(_header(PROTOCOL_VERSION, 6, []), id="unused-code"),
        pytest.param(_header(PROTOCOL_VERSION, "Hello", []), id="code-as-str"),
        pytest.param(_header(PROTOCOL_VERSION, 1.0, []), id="code-as-float"),
        pytest.param(_header(PROTOCOL_VERSION, 3, [], "extra"), id="too-many-fields"),
        pytest.param(_header(PROTOCOL_VERSION, 12, [], 1, 2), id="too-many-fields-endjob"),
        pytest.param(_header(PROTOCOL_VERSION, 1, [], "client"), id="missing-fields"),
        pytest.param(_header(PROTOCOL_VERSION, 3, 5), id="sizes-not-list"),
        pytest.param(_header(PROTOCOL_VERSION, 3, [-2]), id="sizes-below-minus-one"),
        pytest.param(_header(PROTOCOL_VERSION, 3, [1.5]), id="sizes-float"),
        pytest.param(_header(PROTOCOL_VERSION, 3, ["4"]), id="sizes-str"),
        pytest.param(_header(PROTOCOL_VERSION, 3, [None]), id="sizes-nil"),
        pytest.param(b"\x93\x01\x03\x90" + b"\xc7\x01\x05x", id="ext-type"),
        pytest.param(b"\xdf\xff\xff\xff\xff", id="huge-map-claim"),
        pytest.param(b"\xdd\xff\xff\xff\xff", id="huge-array-claim"),
        pytest.param(b"\x91" * 100_000 + b"\x90", id="deep-nesting"),
    ],
)
def test_bad_headers_raise_protocol_error(header: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(header)


def test_oversized_header_is_refused_before_parsing() -> None:
    header = _header(PROTOCOL_VERSION, 4, [], "x" * (protocol.MAX_HEADER_BYTES + 1))
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(header)


def test_map_with_non_string_keys_is_refused() -> None:
    header = _header(PROTOCOL_VERSION, protocol.StatusReply.TYPE, [], {1: "x"})
    with pytest.raises(ProtocolError):
        decode(header)


# --- pack / unpack ---------------------------------------------------------------------------


def _round_trip(frames: list[Any]) -> list[bytes]:
    sizes, physical = pack(frames)
    return [bytes(v) for v in unpack(sizes, _views(physical))]


def test_pack_empty() -> None:
    assert pack([]) == ([], [])
    assert unpack([], []) == []


def test_pack_small_frames_share_one_physical_frame() -> None:
    frames = [b"a", b"", b"bcd", bytearray(b"ef")]
    sizes, physical = pack(frames)
    assert sizes == [1, 0, 3, 2]
    assert len(physical) == 1 and bytes(physical[0]) == b"abcdef"
    assert _round_trip(frames) == [b"a", b"", b"bcd", b"ef"]


def test_pack_large_frames_travel_alone_and_uncopied() -> None:
    big = bytearray(b"x" * PACK_LIMIT)
    bigger = memoryview(b"y" * (3 * PACK_LIMIT))
    frames: list[Any] = [b"head", big, b"mid", bigger, b""]
    sizes, physical = pack(frames)
    assert sizes == [4, -1, 3, -1, 0]
    assert len(physical) == 3
    assert bytes(physical[0]) == b"headmid"
    assert physical[1] is big and physical[2] is bigger
    assert _round_trip(frames) == [b"head", bytes(big), b"mid", bytes(bigger), b""]


def test_pack_only_large_frames_has_no_pack_frame() -> None:
    frames = [b"a" * PACK_LIMIT, b"b" * (PACK_LIMIT + 1)]
    sizes, physical = pack(frames)
    assert sizes == [-1, -1] and len(physical) == 2
    assert _round_trip(frames) == frames


def test_pack_single_empty_frame() -> None:
    sizes, physical = pack([b""])
    assert sizes == [0] and [bytes(f) for f in physical] == [b""]
    assert _round_trip([b""]) == [b""]


def test_pack_memoryview_of_non_bytes_uses_nbytes() -> None:
    import array

    arr = array.array("d", range(PACK_LIMIT // 8))  # nbytes == PACK_LIMIT, len() is 8x less
    sizes, physical = pack([memoryview(arr)])
    assert sizes == [-1]
    small = array.array("d", [1.0, 2.0])
    sizes, physical = pack([memoryview(small)])
    assert sizes == [16]
    assert bytes(unpack(sizes, _views(physical))[0]) == small.tobytes()


def test_unpack_returns_zero_copy_views() -> None:
    sizes, physical = pack([b"ab", b"cd"])
    views = _views(physical)
    out = unpack(sizes, views)
    assert all(isinstance(v, memoryview) for v in out)
    assert out[1].obj is views[0].obj


@pytest.mark.parametrize(
    ("sizes", "physical"),
    [
        pytest.param([], [b"x"], id="frames-without-layout"),
        pytest.param([1], [], id="layout-without-frames"),
        pytest.param([-1], [], id="missing-big-frame"),
        pytest.param([-1], [b"a", b"b"], id="extra-big-frame"),
        pytest.param([2, -1], [b"ab"], id="pack-but-no-big-frame"),
        pytest.param([2], [b"abc"], id="pack-too-long"),
        pytest.param([2, 2], [b"abc"], id="pack-too-short"),
        pytest.param([1], [b"a", b"b"], id="extra-frame-after-pack"),
        pytest.param([0, 0], [b"", b""], id="two-pack-frames"),
    ],
)
def test_unpack_mismatched_layout_raises(sizes: list[int], physical: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        unpack(sizes, _views(physical))


def test_count_frames() -> None:
    assert count_frames([[1, 2], [2, 0], [3, 5]], 1) == 7
    assert count_frames([], 1) == 0
    for bad in ([[1, -1]], [[1, "2"]], [[1, 1.0]], [[1, None]]):
        with pytest.raises(ProtocolError):
            count_frames(bad, 1)


@pytest.mark.parametrize("items", [[[1]], [5], "ab"], ids=["short-item", "int-item", "str-items"])
def test_count_frames_malformed_items_raise_protocol_error(items: Any) -> None:
    with pytest.raises(ProtocolError):
        count_frames(items, 1)


# --- Signer -------------------------------------------------------------------------------------


def test_signer_without_key_is_a_no_op() -> None:
    for key in (None, b""):
        signer = Signer(key)
        assert signer.sign([b"header", b"payload"]) == b""
        assert signer.verify(b"", [b"header"])
        assert signer.verify(b"anything", [b"header"])


def test_signer_with_key_signs_and_verifies() -> None:
    signer = Signer(b"secret")
    frames: list[Any] = [encode(SAMPLES["Submit"], [3]), b"abc"]
    sig = signer.sign(frames)
    assert len(sig) == 32
    assert signer.verify(sig, frames)
    assert signer.verify(memoryview(sig), _views(frames))


def test_signer_rejects_tampering_and_wrong_key() -> None:
    signer = Signer(b"secret")
    frames = [encode(SAMPLES["EndJob"]), b"payload"]
    sig = signer.sign(frames)
    assert not signer.verify(sig, [frames[0], b"payloaD"])
    assert not signer.verify(sig, [frames[0]])
    assert not signer.verify(sig[:-1] + bytes([sig[-1] ^ 1]), frames)
    assert not signer.verify(b"", frames)
    assert not Signer(b"other").verify(sig, frames)
    assert Signer(b"other").sign(frames) != sig


def test_signature_binds_frame_boundaries() -> None:
    signer = Signer(b"secret")
    sig = signer.sign([b"header", b"ab", b"c"])
    assert not signer.verify(sig, [b"header", b"a", b"bc"])


# --- property tests --------------------------------------------------------------------------------

_plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_int = st.integers(-(2**63), 2**63 - 1)
_BY_TYPE: dict[Any, st.SearchStrategy[Any]] = {
    str: st.text(max_size=40),
    bytes: st.binary(max_size=32),
    int: _int,
    float: st.floats(allow_nan=False),
    bool: st.booleans(),
    list[int]: st.lists(_int, max_size=8),
    list[list[int]]: st.lists(st.lists(_int, max_size=5), max_size=8),
    list[list[Any]]: st.lists(st.lists(_plain, max_size=6), max_size=6),
    dict[str, Any]: st.dictionaries(st.text(max_size=10), _plain, max_size=6),
    list[Any]: st.lists(_plain, max_size=6),  # shared objects
    Any: _plain,
}


def _message_strategy(cls: type[protocol.Message]) -> st.SearchStrategy[protocol.Message]:
    hints = typing.get_type_hints(cls)
    fields = [_BY_TYPE[hints[f.name]] for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return st.tuples(*fields).map(lambda args: cls(*args))


_messages = st.sampled_from(sorted(protocol.message_types().values(), key=lambda c: c.TYPE)).flatmap(
    _message_strategy
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=_messages, sizes=st.lists(st.integers(-1, 2**32), max_size=6))
def test_any_valid_message_round_trips(msg: protocol.Message, sizes: list[int]) -> None:
    got, got_sizes = decode(encode(msg, sizes))
    assert type(got) is type(msg)
    assert got.fields() == msg.fields()
    assert got_sizes == sizes


def _decode_only_raises_protocol_error(data: bytes) -> None:
    try:
        msg, sizes = decode(data)
    except ProtocolError:
        return
    assert isinstance(msg, protocol.Message)
    assert isinstance(sizes, list)


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=256))
def test_decode_of_arbitrary_bytes_only_raises_protocol_error(data: bytes) -> None:
    _decode_only_raises_protocol_error(data)


@settings(max_examples=200, deadline=None)
@given(
    version=st.sampled_from([PROTOCOL_VERSION, PROTOCOL_VERSION, 0, 2, None, "1"]),
    code=st.sampled_from(sorted(c.TYPE for c in protocol.message_types().values())) | _plain,
    sizes=_plain,
    fields=st.lists(_plain, max_size=10),
)
def test_decode_of_arbitrary_msgpack_arrays_only_raises_protocol_error(
    version: Any, code: Any, sizes: Any, fields: list[Any]
) -> None:
    _decode_only_raises_protocol_error(_header(version, code, sizes, *fields))


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.integers(PACK_LIMIT - 2, PACK_LIMIT + 2).map(lambda n: b"z" * n),
        ),
        max_size=8,
    )
)
def test_pack_unpack_round_trip_property(frames: list[bytes]) -> None:
    assert _round_trip(frames) == frames


# --- the Unpacker kept per thread (dmp.wire.codec._unpack) ----------------------------


def _unpackb(data: bytes) -> tuple[bool, Any]:
    """What msgpack.unpackb with the header limits makes of ``data``: (ok, object)."""
    try:
        return True, msgpack.unpackb(data, raw=False, strict_map_key=True, **protocol.UNPACK_LIMITS)
    except Exception:
        return False, None


def _kept(data: bytes) -> tuple[bool, Any]:
    from dmp.wire import codec

    try:
        return True, codec._unpack(data)
    except ProtocolError:
        return False, None


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=64) | _plain.map(lambda v: msgpack.packb(v, use_bin_type=True)))
def test_kept_unpacker_agrees_with_unpackb(data: bytes) -> None:
    # Valid or not, in any order: the kept Unpacker accepts exactly what unpackb accepts, with
    # the same object, and a refused header leaves nothing behind for the next one.
    assert _kept(data) == _unpackb(data)
    good = encode(SAMPLES["JobResults"], [3])
    assert decode(good) == (SAMPLES["JobResults"], [3])


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda h: h[:-1], id="truncated"),
        pytest.param(lambda h: h + b"\x90", id="a second object"),
        pytest.param(lambda h: h + h, id="two headers"),
        pytest.param(lambda h: b"", id="empty"),
        pytest.param(lambda h: b"\xc1" + h, id="reserved byte"),
    ],
)
def test_kept_unpacker_refuses_then_decodes_the_next_header(bad: Any) -> None:
    good = encode(SAMPLES["Submit"], [1, 2])
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        decode(bad(good))
    assert decode(good) == (SAMPLES["Submit"], [1, 2])
    assert decode(memoryview(good)) == (SAMPLES["Submit"], [1, 2])


def test_kept_unpacker_starts_clean_after_an_interrupt_between_feed_and_unpack() -> None:
    """A signal handler's KeyboardInterrupt (Ctrl-C, a test's alarm) can come between the
    kept Unpacker's feed and unpack: the fed header must not be what the thread's next
    decode returns."""
    from dmp.wire import codec

    decode(encode(SAMPLES["Submit"], [1, 2]))  # this thread has its kept Unpacker
    real = codec._unpackers.unpacker

    class Interrupted:  # the kept Unpacker, whose first unpack is interrupted
        fired = False

        def tell(self) -> int:
            return int(real.tell())

        def feed(self, data: Any) -> None:
            real.feed(data)

        def unpack(self) -> Any:
            if not self.fired:
                self.fired = True
                raise KeyboardInterrupt
            return real.unpack()

    codec._unpackers.unpacker = Interrupted()
    with pytest.raises(KeyboardInterrupt):
        decode(encode(SAMPLES["Heartbeat"], []))
    assert decode(encode(SAMPLES["Submit"], [3])) == (SAMPLES["Submit"], [3])


def test_headers_above_the_kept_unpackers_size_decode_alike() -> None:
    from dmp.wire import codec

    big = protocol.JobResults([[1, i, 0, 0, "x" * 40] for i in range(2000)])
    header = encode(big, [])
    assert len(header) >= codec.REUSE_BELOW
    assert decode(header) == (big, [])
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        decode(header + b"\x90")
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        decode(header[:-1])
