"""The wire protocol's one public face: ``from dmp.wire import protocol; protocol.Hello``.

Everything dmp peers put on the wire is named here, re-exported from the
modules that hold it (docs/protocol.md is the table of it all):

    dmp.wire.codes       Role, Status, ErrorCode, ObjStatus, software_version()
    dmp.wire.catalogue   the message types, each meaning one thing in one direction
                         (dmp.wire.objcatalogue: those of shared objects)
    dmp.wire.codec       PROTOCOL_VERSION, encode/decode (header), pack/unpack (payload), count_frames
    dmp.wire.signing     Signer: the HMAC over a message's frames

A message on the wire is a ZeroMQ multipart message:

    [routing id]        added and removed by ROUTER sockets only
    signature           HMAC-SHA256 over header and payload frames; empty without authkey
    header              msgpack array: [PROTOCOL_VERSION, type code, sizes, field, ...]
    payload frame ...   opaque bytes (cloudpickle data and out-of-band buffers)

Code outside ``dmp.wire`` imports this module, never the modules behind it.
"""

from __future__ import annotations

from dmp.wire.catalogue import (
    Bye,
    CancelJob,
    DefineJob,
    Dispatch,
    EndJob,
    Error,
    ForgetJobs,
    Heartbeat,
    Hello,
    JobOutput,
    JobResults,
    JobTaskStarted,
    SignalJob,
    SignalWorker,
    StatusReply,
    StatusRequest,
    Submit,
    TaskDone,
    TaskOutput,
    TaskStarted,
    Welcome,
    WorkerExited,
    WorkerSpared,
)
from dmp.wire.codec import (
    MAX_HEADER_BYTES,
    PACK_LIMIT,
    PROTOCOL_VERSION,
    UNPACK_LIMITS,
    Message,
    VersionMismatch,
    count_frames,
    decode,
    encode,
    message,
    message_types,
    pack,
    unpack,
)
from dmp.wire.codes import ErrorCode, ObjStatus, Role, Status, software_version
from dmp.wire.objcatalogue import (
    HostCall,
    HostDrop,
    HostReady,
    HostReply,
    ObjCall,
    ObjCancel,
    ObjCreate,
    ObjRelease,
    ObjReply,
)
from dmp.wire.signing import Signer

__all__ = [
    "MAX_HEADER_BYTES",
    "PACK_LIMIT",
    "PROTOCOL_VERSION",
    "UNPACK_LIMITS",
    "Bye",
    "CancelJob",
    "DefineJob",
    "Dispatch",
    "EndJob",
    "Error",
    "ErrorCode",
    "ForgetJobs",
    "Heartbeat",
    "Hello",
    "HostCall",
    "HostDrop",
    "HostReady",
    "HostReply",
    "JobOutput",
    "JobResults",
    "JobTaskStarted",
    "Message",
    "ObjCall",
    "ObjCancel",
    "ObjCreate",
    "ObjRelease",
    "ObjReply",
    "ObjStatus",
    "Role",
    "SignalJob",
    "SignalWorker",
    "Signer",
    "Status",
    "StatusReply",
    "StatusRequest",
    "Submit",
    "TaskDone",
    "TaskOutput",
    "TaskStarted",
    "VersionMismatch",
    "Welcome",
    "WorkerExited",
    "WorkerSpared",
    "count_frames",
    "decode",
    "encode",
    "message",
    "message_types",
    "pack",
    "software_version",
    "unpack",
]
