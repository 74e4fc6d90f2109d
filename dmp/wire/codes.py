"""The enumerations message fields carry, and the version string peers must share.

    Role        Hello.role: who a peer is
    Status      the status column of TaskDone and JobResults items: one task's outcome
    ErrorCode   Error.code: why the manager refused something
    ObjStatus   ObjReply.status and HostReply.status: one shared-object request's outcome
"""

from __future__ import annotations

import enum
import sys


def software_version() -> str:
    """What a peer must match to join: dmp's version and Python's minor version."""
    from dmp import __version__

    return f"dmp {__version__}, Python {sys.version_info[0]}.{sys.version_info[1]}"


class Role(enum.StrEnum):
    CLIENT = "client"
    NODE = "node"
    WORKER = "worker"
    STATUS = "status"


class Status(enum.IntEnum):
    """Outcome of one task, in ``TaskDone`` and ``JobResults`` items."""

    OK = 0  # payload: the pickled return value
    RAISED = 1  # payload: the pickled (exception, traceback text)
    LOST = 2  # no payload; info names node, pid, exit code and cause
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


class ObjStatus(enum.IntEnum):
    """Outcome of one shared-object request, in ``ObjReply.status`` and ``HostReply.status``."""

    OK = 0  # value (plain data) and/or payload (the pickled result)
    RAISED = 1  # payload: the pickled (exception, traceback text) from the object host
    FAILED = 2  # value: [exception name, text] from the manager (Empty, Full, ...)
    REDIRECT = 3  # direct route only: not run; ask through ZeroMQ (dmp.wire.direct)
