"""How a message becomes frames and back: the header codec, payload packing, batch counts.

    Message --encode--> header frame: msgpack [PROTOCOL_VERSION, type code, sizes, field, ...]
    logical payload frames --pack--> (sizes, physical frames) --unpack--> logical frames (views)

Payload frames are *logical*: ``sizes`` lists one entry per logical frame,
its length if it travels inside the pack (the first physical payload frame,
holding every small logical frame back to back) or -1 if it travels as its
own physical frame. Ten thousand tiny task payloads thus cost one ZeroMQ
frame, not ten thousand; a 16 MiB array is never copied into a pack.

The header carries only plain data (ints, floats, strings, bytes, lists) and
is decoded with strict size limits; payload frames are never looked into by
the manager. This module knows no message type by name: ``dmp.wire.catalogue``
declares them with :func:`message`, which registers each here.
"""

from __future__ import annotations

import dataclasses
import operator
import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import msgpack

from dmp.errors import ProtocolError

# Bumped by any change to a type's code, field order or meaning (not by a
# trailing field with a default). 3: each message means one thing in one
# direction (TaskDone / JobResults, TaskOutput / JobOutput, TaskStarted /
# JobTaskStarted), Hello's slots became max_workers, Welcome lost version.
# 4: a frame of 64 KiB or more is signed by its SHA-256 (dmp.wire.signing).
PROTOCOL_VERSION = 4

class VersionMismatch(ProtocolError):
    """The header's protocol version is not this side's (the manager answers ``Error(version)``)."""


# Header decoding limits: a hostile peer must not make the decoder allocate
# much. Real headers are small (a Dispatch of 1024 tasks is ~20 KiB).
MAX_HEADER_BYTES = 4 * 1024 * 1024
UNPACK_LIMITS = dict(
    max_str_len=1024 * 1024,
    max_bin_len=1024 * 1024,
    max_array_len=1_000_000,
    max_map_len=100_000,
    max_ext_len=0,
)

# Logical payload frames shorter than this travel together in the pack frame.
PACK_LIMIT = 32 * 1024


class Message:
    """Base of all message types. Subclasses are slotted dataclasses.

    ``SENDERS`` and ``RECEIVERS`` name who may send the type and who gets it:
    the roles of ``dmp.wire.catalogue.Role``, "host" (the object host, a
    client peer) and "manager". The manager refuses a type from a role that
    is not among its senders.
    """

    TYPE: ClassVar[int]
    SENDERS: ClassVar[tuple[str, ...]]
    RECEIVERS: ClassVar[tuple[str, ...]]

    def fields(self) -> list[Any]:
        return list(_FIELDS_OF[self.TYPE](self))


_REGISTRY: dict[int, type[Message]] = {}
_FIELD_COUNT: dict[int, int] = {}
_FIELD_NAMES: dict[int, tuple[str, ...]] = {}
_FIELD_TYPES: dict[int, tuple[type | tuple[type, ...] | None, ...]] = {}
# Per type, the tuples of field types (as decoded) that passed the field check:
# a header of a known shape skips the per-field loop. Bounded, so a peer
# trying every combination only makes its own messages slower.
_GOOD_SHAPES: dict[int, set[tuple[type, ...]]] = {}
# Per type, a C getter of every field value in order (encode's one call per message).
_FIELDS_OF: dict[int, Callable[[Any], tuple[Any, ...]]] = {}
MAX_SHAPES = 32


def _wire_type(annotation: Any) -> type | tuple[type, ...] | None:
    """What a field must decode as (None: anything msgpack makes)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if text == "str":
        return str
    if text == "int":
        return int
    if text == "bool":
        return bool
    if text == "float":
        return (int, float)
    if text == "bytes":
        return bytes
    if text.startswith("list"):
        return list
    if text.startswith("dict"):
        return dict
    return None


_M = TypeVar("_M", bound=type[Message])


def message(code: int, senders: tuple[str, ...], receivers: tuple[str, ...]) -> Callable[[_M], _M]:
    """Class decorator (above ``@dataclass``): register a message type under
    ``code``, sent by ``senders`` to ``receivers``."""

    def wrap(cls: _M) -> _M:
        if code in _REGISTRY:
            raise RuntimeError(f"message code {code} used twice")
        cls.TYPE = code
        cls.SENDERS = senders
        cls.RECEIVERS = receivers
        _REGISTRY[code] = cls
        names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        _FIELD_COUNT[code] = len(names)
        _FIELD_NAMES[code] = names
        _FIELD_TYPES[code] = tuple(_wire_type(f.type) for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        _GOOD_SHAPES[code] = set()
        _FIELDS_OF[code] = _getter(names)
        return cls

    return wrap


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A function of a message returning its field values as a tuple, in order."""
    if len(names) > 1:
        return operator.attrgetter(*names)
    if names:
        one = operator.attrgetter(names[0])
        return lambda msg: (one(msg),)
    return lambda msg: ()


def message_types() -> dict[str, type[Message]]:
    """Name -> class for every registered message type (docs test uses it)."""
    return {cls.__name__: cls for cls in _REGISTRY.values()}


def encode(msg: Message, sizes: list[int] | None = None) -> bytes:
    """The msgpack header frame for ``msg`` with its payload layout ``sizes``."""
    code = msg.TYPE
    try:
        pack = _packers.pack
    except AttributeError:  # this thread's first header
        pack = _packers.pack = msgpack.Packer(use_bin_type=True).pack
    out: bytes = pack([PROTOCOL_VERSION, code, sizes or [], *_FIELDS_OF[code](msg)])
    return out


def decode(header: bytes | memoryview) -> tuple[Message, list[int]]:
    """Parse a header frame.

    Raises:
        ProtocolError: not msgpack, wrong version, unknown type or wrong fields.
    """
    if len(header) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    obj = _unpack(header)
    if not isinstance(obj, list) or len(obj) < 3:
        raise ProtocolError("header is not a [version, type, sizes, ...] array")
    version, code = obj[0], obj[1]
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise VersionMismatch(f"peer speaks dmp protocol version {version!r}, this side speaks {PROTOCOL_VERSION}")
    cls = _REGISTRY.get(code) if type(code) is int else None
    if cls is None:
        raise ProtocolError(f"unknown message type {code!r}")
    sizes = obj[2]
    if type(sizes) is not list:
        raise ProtocolError("header's payload layout is not a list of sizes")
    if len(sizes) == 1:  # the usual layout (one pack): checked by hand, the C calls below cost ~3k instructions
        if type(sizes[0]) is not int or sizes[0] < -1:
            raise ProtocolError("header's payload layout is not a list of sizes")
    # map(type, ...) and min() run in C: a long layout costs no Python loop.
    elif sizes and (not _JUST_INT.issuperset(map(type, sizes)) or min(sizes) < -1):
        raise ProtocolError("header's payload layout is not a list of sizes")
    args = obj[3:]
    # The same tuple as tuple(map(type, args)), built directly for the usual one or two fields.
    n = len(args)
    shape = (type(args[0]),) if n == 1 else (type(args[0]), type(args[1])) if n == 2 else tuple(map(type, args))
    good = _GOOD_SHAPES[code]
    if shape not in good:
        _check_fields(cls, code, args)
        if len(good) < MAX_SHAPES:
            good.add(shape)
    try:
        return cls(*args), sizes
    except TypeError as exc:
        raise ProtocolError(f"malformed {cls.__name__}: {exc}") from None


_JUST_INT = frozenset({int})
# A Packer per thread, reused: msgpack.packb builds one per call (a third of
# the cost of a small header). A Packer is not thread-safe, hence one each.
_packers = threading.local()
# Likewise an Unpacker per thread for headers up to REUSE_BELOW bytes:
# msgpack.unpackb takes its options (the limits) as keywords and builds its
# state on every call, 1.6 us for a small header where feed + unpack on a
# kept Unpacker with the same options takes 0.7 us. Bigger headers (rare)
# go to unpackb, so no thread keeps a big buffer.
REUSE_BELOW = 64 * 1024
_unpackers = threading.local()


def _new_unpacker() -> msgpack.Unpacker:
    return msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=REUSE_BELOW, **UNPACK_LIMITS)


def _unpack(header: bytes | memoryview) -> Any:
    """One msgpack object that is the whole of ``header``, under UNPACK_LIMITS.

    Raises:
        ProtocolError: not msgpack, not one whole object, or over the limits.
    """
    if len(header) >= REUSE_BELOW:
        try:
            return msgpack.unpackb(header, raw=False, strict_map_key=True, **UNPACK_LIMITS)
        except Exception as exc:  # msgpack raises several unrelated types
            raise ProtocolError(f"header is not valid msgpack: {exc}") from None
    try:
        unpacker = _unpackers.unpacker
    except AttributeError:  # this thread's first header
        unpacker = _unpackers.unpacker = _new_unpacker()
    start = unpacker.tell()
    try:
        unpacker.feed(header)
        obj = unpacker.unpack()
    except BaseException as exc:  # msgpack raises several unrelated types
        # It may hold part of this header, or all of it (a signal handler's exception,
        # e.g. KeyboardInterrupt, between feed and unpack): start clean either way.
        _unpackers.unpacker = _new_unpacker()
        if not isinstance(exc, Exception):
            raise
        if isinstance(exc, msgpack.OutOfData):
            exc = ValueError("incomplete")
        raise ProtocolError(f"header is not valid msgpack: {exc}") from None
    if unpacker.tell() - start != len(header):  # as unpackb: one object, nothing after it
        _unpackers.unpacker = _new_unpacker()
        raise ProtocolError("header is not valid msgpack: extra data after the object")
    return obj


def _check_fields(cls: type[Message], code: int, args: list[Any]) -> None:
    """Raise ProtocolError unless ``args`` fit the fields of ``cls`` (count and types)."""
    if len(args) > _FIELD_COUNT[code]:
        raise ProtocolError(f"{cls.__name__} has {len(args)} fields, expected {_FIELD_COUNT[code]}")
    for value, expected, name in zip(args, _FIELD_TYPES[code], _FIELD_NAMES[code]):
        # Field types are checked here, once, so that no handler ever meets
        # a list where it expects a name. msgpack makes exact types, so a
        # mismatch is either wrong or a bool where an int is due (bool is an
        # int to Python: refuse it); floats may come as ints.
        if type(value) is expected or expected is None:
            continue
        if expected is int or not isinstance(value, expected):
            raise ProtocolError(f"{cls.__name__}.{name} must be {_type_name(expected)}, not {type(value).__name__}")


def _type_name(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return expected.__name__


def pack(frames: Sequence[Any]) -> tuple[list[int], list[Any]]:
    """(sizes, physical frames) for logical ``frames``; see the module docstring."""
    if not frames:
        return [], []
    sizes: list[int] = []
    small: list[Any] = []
    physical: list[Any] = []
    for f in frames:
        n = f.nbytes if isinstance(f, memoryview) else len(f)
        if n < PACK_LIMIT:
            sizes.append(n)
            small.append(f)
        else:
            sizes.append(-1)
            physical.append(f)
    if small:
        physical.insert(0, b"".join(small))
    return sizes, physical


def unpack(sizes: list[int], physical: list[memoryview]) -> list[memoryview]:
    """Logical frames from physical ones, as zero-copy views.

    Raises:
        ProtocolError: the layout does not match the frames.
    """
    packed_bytes = 0
    n_big = 0
    for n in sizes:
        if n >= 0:
            packed_bytes += n
        else:
            n_big += 1
    has_pack = n_big < len(sizes)
    if len(physical) != n_big + has_pack:
        raise ProtocolError("payload frames do not match the header's layout")
    if not has_pack:
        return list(physical)
    packed = physical[0]
    if packed.nbytes != packed_bytes:
        raise ProtocolError("pack frame length does not match the header's layout")
    big = iter(physical[1:])
    out: list[memoryview] = []
    off = 0
    for n in sizes:
        if n >= 0:
            out.append(packed[off : off + n])
            off += n
        else:
            out.append(next(big))
    return out


def count_frames(items: Sequence[Sequence[Any]], index: int, width: int = 0) -> int:
    """Sum of the nframes column ``index`` of batch items, validated
    (``width``: each item must have exactly this many fields)."""
    if not isinstance(items, list):
        raise ProtocolError(f"batch items must be a list, not {type(items).__name__}")
    total = 0
    for item in items:
        if not isinstance(item, list) or len(item) <= index or (width and len(item) != width):
            raise ProtocolError(f"malformed batch item {item!r}")
        n = item[index]
        if type(n) is not int or n < 0:
            raise ProtocolError(f"bad frame count {n!r}")
        total += n
    return total
