"""Top-level Queue, Lock, Event, Value, ... in both modes.

No address anywhere: the standard library's fork-context objects, which
behave exactly as in multiprocessing. With an address (``dmp.connect()`` or
``DMP_ADDRESS``): the same names make objects hosted by that manager and
return proxies, which pickle, so ``q = dmp.Queue();
dmp.Process(target=f, args=(q,)).start()`` works in both modes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

from dmp import _config, context
from dmp.client import toplevel

_managers: dict[tuple[str, bytes | None], Any] = {}
_lock = threading.Lock()


_override = threading.local()


@contextlib.contextmanager
def local_method(method: str | None) -> Iterator[None]:
    """Objects made in this block (by this thread) use start method ``method`` locally."""
    before = getattr(_override, "method", None)
    _override.method = method
    try:
        yield
    finally:
        _override.method = before


def _local() -> Any:
    """The standard library context of the start method in force (local mode)."""
    return context.stdlib_context(getattr(_override, "method", None))


def _cluster() -> Any:
    """The connected SyncManager of the configured cluster, or None in local mode."""
    target = _config.resolve()
    if target.address is None:
        return None
    with _lock:
        manager = _managers.get((target.address, target.authkey))
        if manager is None:
            from dmp.managers import SyncManager

            manager = SyncManager(address=target.address, authkey=target.authkey)
            manager.connect()
            _managers[(target.address, target.authkey)] = manager
        return manager


def Queue(maxsize: int = 0) -> Any:
    """A process-shared FIFO queue (``multiprocessing.Queue``).

    Raises:
        ManagerUnavailableError: (cluster mode) no manager answered in time.
        AuthenticationError: (cluster mode) the manager refused the authkey.
    """
    m = _cluster()
    return _local().Queue(maxsize) if m is None else toplevel.make(m, "Queue", toplevel.Queue, maxsize)


def JoinableQueue(maxsize: int = 0) -> Any:
    """A :func:`Queue` with ``task_done()`` and ``join()``.

    Raises:
        ManagerUnavailableError: (cluster mode) no manager answered in time.
        AuthenticationError: (cluster mode) the manager refused the authkey.
    """
    m = _cluster()
    if m is None:
        return _local().JoinableQueue(maxsize)
    return toplevel.make(m, "JoinableQueue", toplevel.JoinableQueue, maxsize)


def SimpleQueue() -> Any:
    """A simple process-shared queue (in cluster mode, a hosted ``Queue``).

    Raises:
        ManagerUnavailableError: (cluster mode) no manager answered in time.
        AuthenticationError: (cluster mode) the manager refused the authkey.
    """
    m = _cluster()
    return _local().SimpleQueue() if m is None else toplevel.make(m, "Queue", toplevel.SimpleQueue)


def Lock() -> Any:
    """A process-shared non-recursive lock.

    Raises:
        ManagerUnavailableError: (cluster mode) no manager answered in time.
        AuthenticationError: (cluster mode) the manager refused the authkey.
    """
    m = _cluster()
    return _local().Lock() if m is None else toplevel.make(m, "Lock", toplevel.Lock)


def RLock() -> Any:
    """A process-shared recursive lock.

    Raises:
        ManagerUnavailableError: (cluster mode) no manager answered in time.
        AuthenticationError: (cluster mode) the manager refused the authkey.
    """
    m = _cluster()
    return _local().RLock() if m is None else toplevel.make(m, "RLock", toplevel.RLock)


def Semaphore(value: int = 1) -> Any:
    """A process-shared semaphore.

    Raises:
        ManagerUnavailableError: (cluster mode) no manager answered in time.
        AuthenticationError: (cluster mode) the manager refused the authkey.
    """
    m = _cluster()
    return _local().Semaphore(value) if m is None else toplevel.make(m, "Semaphore", toplevel.Semaphore, value)


def BoundedSemaphore(value: int = 1) -> Any:
    """A process-shared semaphore that refuses to be released above its start value.

    Raises:
        ManagerUnavailableError: (cluster mode) no manager answered in time.
        AuthenticationError: (cluster mode) the manager refused the authkey.
    """
    m = _cluster()
    if m is None:
        return _local().BoundedSemaphore(value)
    return toplevel.make(m, "BoundedSemaphore", toplevel.Semaphore, value)


def Event() -> Any:
    """A process-shared event flag.

    Raises:
        ManagerUnavailableError: (cluster mode) no manager answered in time.
        AuthenticationError: (cluster mode) the manager refused the authkey.
    """
    m = _cluster()
    return _local().Event() if m is None else m.Event()


def Condition(lock: Any = None) -> Any:
    """A process-shared condition variable (in cluster mode ``lock`` is ignored: the hosted condition has its own).

    Raises:
        ManagerUnavailableError: (cluster mode) no manager answered in time.
        AuthenticationError: (cluster mode) the manager refused the authkey.
    """
    m = _cluster()
    return _local().Condition(lock) if m is None else toplevel.make(m, "Condition", toplevel.Condition)


def Barrier(parties: int, action: Any = None, timeout: float | None = None) -> Any:
    """A process-shared barrier for ``parties`` processes.

    Raises:
        ManagerUnavailableError: (cluster mode) no manager answered in time.
        AuthenticationError: (cluster mode) the manager refused the authkey.
    """
    m = _cluster()
    return _local().Barrier(parties, action, timeout) if m is None else m.Barrier(parties, action, timeout)


def Value(typecode_or_type: Any, *args: Any, lock: Any = True) -> Any:
    """A process-shared ctypes value (in cluster mode, a hosted value proxy).

    Raises:
        ManagerUnavailableError: (cluster mode) no manager answered in time.
        AuthenticationError: (cluster mode) the manager refused the authkey.
    """
    m = _cluster()
    if m is None:
        return _local().Value(typecode_or_type, *args, lock=lock)
    return toplevel.value(m, typecode_or_type, args, lock)


def Array(typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True) -> Any:
    """A process-shared ctypes array (in cluster mode, a hosted array proxy).

    Raises:
        ManagerUnavailableError: (cluster mode) no manager answered in time.
        AuthenticationError: (cluster mode) the manager refused the authkey.
    """
    m = _cluster()
    if m is None:
        return _local().Array(typecode_or_type, size_or_initializer, lock=lock)
    return toplevel.array_of(m, typecode_or_type, size_or_initializer, lock)


def Pipe(duplex: bool = True) -> tuple[Any, Any]:
    """Two connected ends (``multiprocessing.connection.Connection``); in cluster mode the
    manager hosts the pipe (``dmp.client.pipes``): ends pickle, and EOF comes when the
    other end's last holder closes it or exits.

    Raises:
        ManagerUnavailableError: (cluster mode) no manager answered in time.
        AuthenticationError: (cluster mode) the manager refused the authkey.
    """
    m = _cluster()
    if m is None:
        a_end, b_end = _local().Pipe(duplex)
        return a_end, b_end
    from dmp.client import pipes

    return pipes.create(m.address, duplex)


# Raw shared memory needs no lock and no manager: the standard library's, in both modes.
RawValue = multiprocessing.RawValue
"""A ctypes value in shared memory, without a lock (``multiprocessing.RawValue``; shared with forked children only)."""
RawArray = multiprocessing.RawArray
"""A ctypes array in shared memory, without a lock (``multiprocessing.RawArray``; shared with forked children only)."""
