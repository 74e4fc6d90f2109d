"""Every message dmp peers exchange, in one place (docs/protocol.md is its table).

A message on the wire is a ZeroMQ multipart message:

    [routing id]        added and removed by ROUTER sockets only
    signature           HMAC-SHA256 over header and payload frames; empty without authkey
    header              msgpack array: [PROTOCOL_VERSION, type code, sizes, field, ...]
    payload frame ...   opaque bytes (cloudpickle data and out-of-band buffers)

Payload frames are *logical*: ``sizes`` lists one entry per logical frame,
its length if it travels inside the pack (the first physical payload frame,
holding every small logical frame back to back) or -1 if it travels as its
own physical frame. Ten thousand tiny task payloads thus cost one ZeroMQ
frame, not ten thousand; a 16 MiB array is never copied into a pack.

The header carries only plain data (ints, floats, strings, bytes, lists) and is
decoded with strict size limits; payload frames are never looked into by the
manager. Batches (``Dispatch``, ``Results``, ``Submit``) carry a list of item
arrays and say how many payload frames belong to each item, in order.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import msgpack

from dmp.errors import ProtocolError

PROTOCOL_VERSION = 2


def software_version() -> str:
    """What a peer must match to join: dmp's version and Python's minor version."""
    import sys

    from dmp import __version__

    return f"dmp {__version__}, Python {sys.version_info[0]}.{sys.version_info[1]}"

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


class Role(enum.StrEnum):
    CLIENT = "client"
    NODE = "node"
    WORKER = "worker"
    STATUS = "status"


class Status(enum.IntEnum):
    """Outcome of one task, in ``Results`` items."""

    OK = 0  # payload: the pickled return value
    RAISED = 1  # payload: the pickled (exception, traceback text)
    LOST = 2  # no payload; info names node, pid and exit code
    CANCELLED = 3  # no payload; the job was cancelled
    TIMEOUT = 4  # no payload; ran past the job's timeout: info names node, pid and timeout
    REFUSED = 5  # no payload; never run: info says why (resources no joined node has)


class ErrorCode(enum.StrEnum):
    VERSION = "version"
    UNKNOWN_PEER = "unknown-peer"
    BAD_MESSAGE = "bad-message"
    AUTH = "auth"
    TOO_LARGE = "too-large"
    UNKNOWN_JOB = "unknown-job"
    REFUSED = "refused"


class Message:
    """Base of all message types. Subclasses are slotted dataclasses."""

    TYPE: ClassVar[int]

    def fields(self) -> list[Any]:
        return [getattr(self, name) for name in _FIELD_NAMES[self.TYPE]]


_REGISTRY: dict[int, type[Message]] = {}
_FIELD_COUNT: dict[int, int] = {}
_FIELD_NAMES: dict[int, tuple[str, ...]] = {}
_FIELD_TYPES: dict[int, tuple[type | tuple[type, ...] | None, ...]] = {}


def _wire_type(annotation: Any) -> type | tuple[type, ...] | None:
    """What a field must decode as (None: anything msgpack makes)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if text == "str":
        return str
    if text == "int":
        return int
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


def message(code: int) -> Callable[[_M], _M]:
    """Class decorator (above ``@dataclass``): register a message type under ``code``."""

    def wrap(cls: _M) -> _M:
        if code in _REGISTRY:
            raise RuntimeError(f"message code {code} used twice")
        cls.TYPE = code
        _REGISTRY[code] = cls
        names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        _FIELD_COUNT[code] = len(names)
        _FIELD_NAMES[code] = names
        _FIELD_TYPES[code] = tuple(_wire_type(f.type) for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        return cls

    return wrap


def message_types() -> dict[str, type[Message]]:
    """Name -> class for every registered message type (docs test uses it)."""
    return {cls.__name__: cls for cls in _REGISTRY.values()}


# --- session and liveness ----------------------------------------------------


@message(1)
@dataclass(slots=True)
class Hello(Message):
    """A peer introduces itself. Reply: Welcome, or Error."""

    role: str
    name: str
    host: str
    pid: int
    slots: int = 0  # workers: 1; nodes: their worker count
    node: str = ""  # workers: the node they belong to
    max_tasks: int = 0  # workers: tasks before they exit (0 = no limit)
    version: str = ""  # software_version(): dmp and Python; must equal the manager's
    nonce: bytes = b""  # with an authkey: the peer's fresh challenge (dmp.wire.handshake)
    resources: dict[str, Any] = field(default_factory=dict)  # nodes: name -> amount they have


@message(2)
@dataclass(slots=True)
class Welcome(Message):
    """The manager accepts a Hello."""

    peer_id: str
    version: str
    heartbeat_s: float
    slots: int = 0  # worker slots in the cluster now
    max_message: int = 0  # bytes; larger messages are refused (0: no limit)
    nonce: bytes = b""  # with an authkey: the manager's half of the session nonce
    direct: str = ""  # where the manager's door takes this client's calls directly ("" for none)


@message(3)
@dataclass(slots=True)
class Heartbeat(Message):
    """Liveness; either direction."""


@message(4)
@dataclass(slots=True)
class Bye(Message):
    """The sender is leaving (or telling the peer to go)."""

    reason: str = ""


@message(5)
@dataclass(slots=True)
class Error(Message):
    """Something the peer sent was refused. ``ref`` names the job or request."""

    code: str
    text: str
    ref: int = 0


# --- tasks -------------------------------------------------------------------


@message(10)
@dataclass(slots=True)
class DefineJob(Message):
    """Client -> manager: a job's runner (payload frames; may be none).

    Every task of the job runs as ``runner(task)``; without a runner, the task
    is itself a callable. ``max_retries`` bounds reruns after worker deaths.
    ``timeout`` (seconds, 0: none) bounds each task's run time; ``resources``
    (name -> amount) is what each task holds on its node while it runs.
    """

    job: int
    nframes: int
    max_retries: int = 3
    timeout: float = 0.0
    resources: dict[str, Any] = field(default_factory=dict)


@message(11)
@dataclass(slots=True)
class Submit(Message):
    """Client -> manager: tasks of a job. ``tasks`` = [[task id, nframes], ...]."""

    job: int
    tasks: list[list[int]] = field(default_factory=list)


@message(12)
@dataclass(slots=True)
class EndJob(Message):
    """Client -> manager: no more tasks for this job; forget it when done."""

    job: int


@message(13)
@dataclass(slots=True)
class CancelJob(Message):
    """Client -> manager: drop the job's queued tasks and abort running ones."""

    job: int


@message(14)
@dataclass(slots=True)
class Dispatch(Message):
    """Manager -> worker: job runners it lacks, then tasks to run, in order.

    ``jobs`` = [[job key, nframes, timeout seconds (0: none)], ...];
    ``tasks`` = [[task key, job key, attempt, nframes], ...].
    """

    jobs: list[list[Any]] = field(default_factory=list)
    tasks: list[list[int]] = field(default_factory=list)


@message(15)
@dataclass(slots=True)
class Results(Message):
    """Outcomes, batched. Worker -> manager items: [task key, attempt, status,
    nframes, run seconds, info]; manager -> client items: [job, task id,
    status, nframes, 0.0, info]. ``info`` is "" except for LOST, where it is
    [text, node, pid, exitcode], TIMEOUT, where it is [text, node, pid,
    timeout], and CANCELLED and REFUSED, where it is a text."""

    items: list[list[Any]] = field(default_factory=list)


@message(16)
@dataclass(slots=True)
class ForgetJobs(Message):
    """Manager -> worker: drop these job runners from the cache."""

    jobs: list[int] = field(default_factory=list)


@message(17)
@dataclass(slots=True)
class Output(Message):
    """Worker -> manager -> client: a line a task printed. ``stream`` is
    'stdout' or 'stderr'; ``origin`` names node and pid."""

    job: int
    task: int
    stream: str
    text: str
    origin: str = ""


@message(18)
@dataclass(slots=True)
class TaskStarted(Message):
    """Worker -> manager -> client: a remote Process's task began (its pid).
    Worker side: ``job`` is 0 and ``task`` the task key; client side: job and task id."""

    job: int
    task: int
    pid: int
    node: str = ""


@message(19)
@dataclass(slots=True)
class SignalJob(Message):
    """Client -> manager: send ``signum`` to the processes running this job's tasks
    (``Process.terminate``/``kill`` in cluster mode)."""

    job: int
    signum: int


# --- nodes and status --------------------------------------------------------


@message(23)
@dataclass(slots=True)
class SignalWorker(Message):
    """Manager -> node: send ``signum`` to worker process ``worker`` (its pid)."""

    worker: str
    pid: int
    signum: int



@message(20)
@dataclass(slots=True)
class WorkerExited(Message):
    """Node -> manager: a worker process ended. ``running`` is the task key it
    was running (-1 for none), read from the worker's shared slot;
    ``timed_out`` is 1 if the node killed it for running past its deadline."""

    worker: str
    pid: int
    exitcode: int
    running: int = -1
    timed_out: int = 0


@message(21)
@dataclass(slots=True)
class StatusRequest(Message):
    """Anyone -> manager: ask for the cluster status."""


@message(22)
@dataclass(slots=True)
class StatusReply(Message):
    """Manager -> asker: the status object of ``dmp status --json``."""

    status: dict[str, Any] = field(default_factory=dict)


# --- shared objects ----------------------------------------------------------
#
#   client --ObjCreate/ObjCall--> manager: ObjectServer
#       reactor kinds (Queue, Lock, ...): a state machine answers, or parks the
#       request until the change it waits for (or its deadline) comes
#       host kind (dict, list, Namespace, registered types):
#           manager --HostCall--> object host --HostReply--> manager
#   manager --ObjReply--> client
#   client --ObjCancel(ref)--> manager: the caller was interrupted; a parked
#       request is dropped unanswered (a reply already on its way is undone
#       by the client: see dmp/proxies.py)
#
# ``timeout`` in ObjCall: -1.0 waits forever, 0.0 does not wait, else seconds.


class ObjStatus(enum.IntEnum):
    """Outcome of one shared-object request, in ``ObjReply.status``."""

    OK = 0  # value (plain data) and/or payload (the pickled result)
    RAISED = 1  # payload: the pickled (exception, traceback text) from the object host
    FAILED = 2  # value: [exception name, text] from the manager (Empty, Full, ...)
    REDIRECT = 3  # direct route only: not run; ask through the manager (dmp.wire.direct)


@message(30)
@dataclass(slots=True)
class ObjCreate(Message):
    """Client -> manager: make a shared object. Reply: ObjReply with its ``oid``.

    ``kind`` is a reactor kind ("Queue", "Lock", ...) with plain constructor
    ``args``, or "host" (payload: the pickled (callable or None, args, kwargs,
    exposed, method_to_typeid) for the object host, ``typeid`` its name).
    """

    ref: int
    kind: str
    typeid: str = ""
    args: list[Any] = field(default_factory=list)


@message(31)
@dataclass(slots=True)
class ObjCall(Message):
    """Client -> manager: call ``method`` of object ``oid``. Reply: ObjReply.

    ``thread`` identifies the calling thread (lock ownership); payload: the
    item, value or raw bytes of a reactor kind, or the pickled (args, kwargs)
    of a host kind.
    """

    ref: int
    oid: int
    method: str
    args: list[Any] = field(default_factory=list)
    timeout: float = -1.0
    thread: int = 0


@message(32)
@dataclass(slots=True)
class ObjReply(Message):
    """Manager -> client: the outcome of request ``ref`` (an ``ObjStatus``).
    ``oid`` is non-zero when the request made a new object; ``direct``, when
    set, is where this client may call that object directly (dmp.wire.direct)."""

    ref: int
    status: int
    value: Any = None
    oid: int = 0
    direct: str = ""


@message(33)
@dataclass(slots=True)
class ObjRelease(Message):
    """Client -> manager: this peer holds these objects no more. No reply."""

    oids: list[int] = field(default_factory=list)


@message(34)
@dataclass(slots=True)
class HostReady(Message):
    """Object host -> manager: this peer runs the host kinds from now on."""

    pid: int = 0


@message(35)
@dataclass(slots=True)
class HostCall(Message):
    """Manager -> object host: call ``method`` of ``oid`` ("__create__" with
    ``typeid`` to make one). ``tag`` is fresh: the reply's key, and the id of
    the object the call makes, if it makes one. Payload: the client's, untouched."""

    tag: int
    oid: int
    method: str
    typeid: str = ""


@message(36)
@dataclass(slots=True)
class HostReply(Message):
    """Object host -> manager: outcome of ``tag`` (an ``ObjStatus``). ``made``
    names the typeid of the object made under id ``tag`` (``value``: its
    exposed methods); ``retain`` lists the objects whose proxies the host
    unpickled and keeps; ``direct`` is the host's direct-route address for
    this object ("" for none), passed on in the ObjReply."""

    tag: int
    status: int
    value: Any = None
    made: str = ""
    retain: list[int] = field(default_factory=list)
    direct: str = ""


@message(37)
@dataclass(slots=True)
class HostDrop(Message):
    """Manager -> object host: forget these objects (nobody holds them)."""

    oids: list[int] = field(default_factory=list)


@message(38)
@dataclass(slots=True)
class ObjCancel(Message):
    """Client -> manager: nobody waits for request ``ref`` any more (its caller
    was interrupted). A parked request is dropped unanswered; anything else
    (unknown, already answered) is ignored. No reply."""

    ref: int


# --- wire encoding -----------------------------------------------------------


def encode(msg: Message, sizes: list[int] | None = None) -> bytes:
    """The msgpack header frame for ``msg`` with its payload layout ``sizes``."""
    out: bytes = msgpack.packb(
        [PROTOCOL_VERSION, msg.TYPE, sizes or [], *msg.fields()], use_bin_type=True
    )
    return out


def decode(header: bytes | memoryview) -> tuple[Message, list[int]]:
    """Parse a header frame.

    Raises:
        ProtocolError: not msgpack, wrong version, unknown type or wrong fields.
    """
    if len(header) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        obj = msgpack.unpackb(header, raw=False, strict_map_key=True, **UNPACK_LIMITS)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"header is not valid msgpack: {exc}") from None
    if not isinstance(obj, list) or len(obj) < 3:
        raise ProtocolError("header is not a [version, type, sizes, ...] array")
    version, code = obj[0], obj[1]
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"peer speaks dmp protocol version {version!r}, this side speaks {PROTOCOL_VERSION}"
        )
    cls = _REGISTRY.get(code) if type(code) is int else None
    if cls is None:
        raise ProtocolError(f"unknown message type {code!r}")
    sizes = obj[2]
    # map(type, ...) and min() run in C: a long layout costs no Python loop.
    if type(sizes) is not list or not _JUST_INT.issuperset(map(type, sizes)) or (sizes and min(sizes) < -1):
        raise ProtocolError("header's payload layout is not a list of sizes")
    args = obj[3:]
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
    try:
        return cls(*args), sizes
    except TypeError as exc:
        raise ProtocolError(f"malformed {cls.__name__}: {exc}") from None


_JUST_INT = frozenset({int})


def _type_name(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return expected.__name__


# Logical payload frames shorter than this travel together in the pack frame.
PACK_LIMIT = 32 * 1024


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


# --- signing -----------------------------------------------------------------


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
