"""The exception tree users see, with bases they already catch.

    Exception
     +-- multiprocessing.ProcessError
     |    +-- dmp.ProcessError                  (same class)
     |    |    +-- BufferTooShort                (same class as multiprocessing's)
     |    |    +-- AuthenticationError           (same class as multiprocessing's)
     |    |    +-- TimeoutError                  (same class as multiprocessing's)
     |    |    |    +-- TaskTimeoutError         a task ran past the pool's task_timeout
     |    |    +-- WorkerLostError               a task's process died past its retries
     |    |    +-- ManagerUnavailableError       no manager answered in time
     |    |    +-- ProtocolError                 a peer spoke a wrong version or garbage
     |    |    +-- MessageTooLargeError          a message exceeded the size limit
     +-- RemoteTraceback (multiprocessing.pool's) the ``__cause__`` of a task's exception
     +-- multiprocessing.pool.MaybeEncodingError
          +-- RemoteError                        a task's exception that could not be pickled

A task's own exception is re-raised with its own type; its remote traceback
hangs off ``__cause__`` as a :class:`RemoteTraceback`, as in
``concurrent.futures``.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]
from multiprocessing.pool import RemoteTraceback as _RemoteTraceback  # type: ignore[attr-defined]

from dmp.deaths import WorkerDeath

ProcessError = multiprocessing.ProcessError
"""``multiprocessing.ProcessError`` itself: the base of every dmp error but a task's own."""
BufferTooShort = multiprocessing.BufferTooShort
"""``multiprocessing.BufferTooShort`` itself: a ``recv_bytes_into`` buffer was too small."""
AuthenticationError = multiprocessing.AuthenticationError
"""``multiprocessing.AuthenticationError`` itself: a peer refused the authkey, or did not prove it."""
TimeoutError = multiprocessing.TimeoutError
"""``multiprocessing.TimeoutError`` itself: a result or a wait was not ready in time."""

__all__ = [
    "AuthenticationError",
    "BufferTooShort",
    "ManagerUnavailableError",
    "MessageTooLargeError",
    "ProcessError",
    "ProtocolError",
    "RemoteError",
    "RemoteTraceback",
    "TaskTimeoutError",
    "TimeoutError",
    "WorkerDeath",
    "WorkerLostError",
]


class WorkerLostError(ProcessError):
    """The process running a task died and the task cannot be retried.

    Carries the node name, the pid and the exit code (negative for a signal)
    of the last process that died running it, and ``cause``: a
    :class:`WorkerDeath` saying what its node knows of why (None when the
    node went away with it).
    """

    def __init__(
        self, message: str, *, node: str = "", pid: int = 0, exitcode: int | None = None,
        cause: WorkerDeath | None = None,
    ) -> None:
        super().__init__(message)
        self.node = node
        self.pid = pid
        self.exitcode = exitcode
        self.cause = cause

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_worker_lost, (str(self), self.node, self.pid, self.exitcode, self.cause))


def _rebuild_worker_lost(
    message: str, node: str, pid: int, exitcode: int | None, cause: WorkerDeath | None = None
) -> WorkerLostError:
    return WorkerLostError(message, node=node, pid=pid, exitcode=exitcode, cause=cause)


class TaskTimeoutError(TimeoutError):
    """A task ran longer than its pool's ``task_timeout`` and was stopped.

    Its worker process was killed (and replaced); the task is not retried.
    Carries the node name, the pid of the killed process and the timeout in
    seconds.
    """

    def __init__(self, message: str, *, node: str = "", pid: int = 0, timeout: float = 0.0) -> None:
        super().__init__(message)
        self.node = node
        self.pid = pid
        self.timeout = timeout

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_task_timeout, (str(self), self.node, self.pid, self.timeout))


def _rebuild_task_timeout(message: str, node: str, pid: int, timeout: float) -> TaskTimeoutError:
    return TaskTimeoutError(message, node=node, pid=pid, timeout=timeout)


class ManagerUnavailableError(ProcessError):
    """No manager answered at an address within the connect timeout, or the
    manager went away while work was in flight."""


class ProtocolError(ProcessError):
    """A peer sent something that is not a dmp message of this version."""


class MessageTooLargeError(ProcessError):
    """A message was larger than the manager's configured maximum."""


# The formatted traceback of an exception raised in another process: the
# standard library's own class, so code checking for it keeps working.
RemoteTraceback = _RemoteTraceback


class RemoteError(MaybeEncodingError):  # type: ignore[misc]
    """Stands in for a task's exception that could not be pickled back.

    Names the original type and message; the remote traceback is its
    ``__cause__``. It is a ``multiprocessing.pool.MaybeEncodingError``, which
    is what the standard library raises in that case.
    """

    def __init__(self, type_name: str, message: str) -> None:
        Exception.__init__(self, f"{type_name}: {message}")
        self.exc = type_name
        self.value = message
        self.type_name = type_name
        self.message = message

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"

    def __repr__(self) -> str:
        return f"<RemoteError: {self}>"

    def __reduce__(self) -> tuple[object, ...]:
        return (RemoteError, (self.type_name, self.message))


def signal_name(exitcode: int | None) -> str:
    """Describe an exit code the way a person reads it: 'signal SIGKILL', 'exit code 3'."""
    import signal

    if exitcode is None:
        return "unknown exit"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"
