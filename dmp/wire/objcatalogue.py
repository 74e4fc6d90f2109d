"""The shared-object messages (Manager, Queue, Lock, ... across processes), each meaning one thing in one direction.

The half of dmp.wire.catalogue (which holds the job, task and node types) for
shared objects; docs/protocol.md is the table of both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dmp.wire.catalogue import CLIENT, HOST, M
from dmp.wire.codec import Message, message

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
#       by the client: see dmp/client/proxies.py)
#
# ``timeout`` in ObjCall: -1.0 waits forever, 0.0 does not wait, else seconds.


@message(30, CLIENT, M)
@dataclass(slots=True)
class ObjCreate(Message):
    """Make a shared object. Reply: ObjReply with its ``oid``.

    ``kind`` is a reactor kind ("Queue", "Lock", ...) with plain constructor
    ``args``, or "host" (payload: the pickled (callable or None, args, kwargs,
    exposed, method_to_typeid) for the object host, ``typeid`` its name).
    """

    ref: int
    kind: str
    typeid: str = ""
    args: list[Any] = field(default_factory=list)


@message(31, CLIENT, M)
@dataclass(slots=True)
class ObjCall(Message):
    """Call ``method`` of object ``oid``. Reply: ObjReply.

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


@message(32, M, CLIENT)
@dataclass(slots=True)
class ObjReply(Message):
    """The outcome of request ``ref`` (an ``ObjStatus``); ``oid``: a new object's, or 0."""

    ref: int
    status: int
    value: Any = None
    oid: int = 0
    direct: str = ""  # where this client may call that object directly (dmp.wire.direct)


@message(33, CLIENT, M)
@dataclass(slots=True)
class ObjRelease(Message):
    """This peer holds these objects no more. No reply."""

    oids: list[int] = field(default_factory=list)


@message(38, CLIENT, M)
@dataclass(slots=True)
class ObjCancel(Message):
    """Nobody waits for request ``ref`` any more (its caller was interrupted). A parked
    request is dropped unanswered; anything else (unknown, answered) is ignored. No reply."""

    ref: int


@message(34, HOST, M)
@dataclass(slots=True)
class HostReady(Message):
    """This peer runs the host kinds from now on."""

    pid: int = 0


@message(35, M, HOST)
@dataclass(slots=True)
class HostCall(Message):
    """Call ``method`` of ``oid`` ("__create__" with ``typeid`` to make one).
    ``tag`` is fresh: the reply's key, and the id of the object the call
    makes, if it makes one. Payload: the client's, untouched."""

    tag: int
    oid: int
    method: str
    typeid: str = ""


@message(36, HOST, M)
@dataclass(slots=True)
class HostReply(Message):
    """Outcome of ``tag`` (an ``ObjStatus``). ``made``: the typeid made under id ``tag``
    (``value``: its exposed methods); ``retain``: objects whose proxies the host keeps."""

    tag: int
    status: int
    value: Any = None
    made: str = ""
    retain: list[int] = field(default_factory=list)
    direct: str = ""  # the host's direct-route address for the object, passed on in ObjReply


@message(37, M, HOST)
@dataclass(slots=True)
class HostDrop(Message):
    """Forget these objects (nobody holds them)."""

    oids: list[int] = field(default_factory=list)
