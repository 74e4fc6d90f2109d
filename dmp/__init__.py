"""dmp: multiprocessing that reaches past one machine.

``import dmp as multiprocessing`` runs unchanged on one host; point it at a
manager daemon (``address=``, ``dmp.connect()`` or ``DMP_ADDRESS``) and the
same Pool, Process, Queue and Manager code runs on the cluster's worker nodes.
Everything not listed in ``__all__`` is internal.
"""

from __future__ import annotations

import importlib
import logging as _logging
import multiprocessing as _mp
from typing import TYPE_CHECKING, Any

from dmp import _config

# Library code never configures logging; only the CLI does.
_logging.getLogger("dmp").addHandler(_logging.NullHandler())

# Public names and the module each lives in, imported on first use (PEP 562),
# so that ``import dmp_server.daemon`` (which needs dmp.wire) loads neither
# cloudpickle nor the pool.
_LAZY = {
    **dict.fromkeys(
        ["AuthenticationError", "BufferTooShort", "ManagerUnavailableError", "MessageTooLargeError",
         "ProcessError", "RemoteError", "TaskTimeoutError", "TimeoutError", "WorkerLostError"],
        "dmp.errors",
    ),
    **dict.fromkeys(
        ["allow_connection_pickling", "get_all_start_methods", "get_context", "get_logger", "get_start_method",
         "log_to_stderr", "reducer", "set_executable", "set_forkserver_preload", "set_start_method"],
        "dmp.context",
    ),
    # importlib.metadata costs ~9 ms to import, and every forked worker would copy its pages.
    "__version__": "dmp._version",
    "Executor": "dmp.client.executor",
    **dict.fromkeys(["LocalCluster", "status", "wait_for_workers"], "dmp.client.cluster"),
    "Pool": "dmp.client.pool",
    **dict.fromkeys(["Process", "active_children", "current_process", "parent_process"], "dmp.client.process"),
    # Queue, Lock, Value, ...: the standard library's fork-context objects in
    # local mode, proxies of objects hosted by the manager in cluster mode.
    **dict.fromkeys(
        ["Array", "Barrier", "BoundedSemaphore", "Condition", "Event", "JoinableQueue", "Lock", "Pipe",
         "Queue", "RLock", "RawArray", "RawValue", "Semaphore", "SimpleQueue", "Value"],
        "dmp.client.primitives",
    ),
}

if TYPE_CHECKING:
    from dmp._version import __version__ as __version__
    from dmp.client.cluster import LocalCluster, status, wait_for_workers
    from dmp.client.executor import Executor
    from dmp.client.pool import Pool
    from dmp.client.primitives import (
        Array,
        Barrier,
        BoundedSemaphore,
        Condition,
        Event,
        JoinableQueue,
        Lock,
        Pipe,
        Queue,
        RawArray,
        RawValue,
        RLock,
        Semaphore,
        SimpleQueue,
        Value,
    )
    from dmp.client.process import Process, active_children, current_process, parent_process
    from dmp.context import (
        allow_connection_pickling,
        get_all_start_methods,
        get_context,
        get_logger,
        get_start_method,
        log_to_stderr,
        reducer,
        set_executable,
        set_forkserver_preload,
        set_start_method,
    )
    from dmp.errors import (
        AuthenticationError,
        BufferTooShort,
        ManagerUnavailableError,
        MessageTooLargeError,
        ProcessError,
        RemoteError,
        TaskTimeoutError,
        TimeoutError,
        WorkerLostError,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dmp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def Manager(address: object = None, authkey: bytes | str | None = None) -> Any:
    """A started (local) or connected (cluster) :class:`dmp.managers.SyncManager`.

    With no address (argument, ``dmp.connect()`` or ``DMP_ADDRESS``) a manager
    process is forked for this process, as ``multiprocessing.Manager()`` does;
    with one, the manager is the daemon at that address.

    Raises:
        ManagerUnavailableError: no manager answered at the address.
        AuthenticationError: the manager refused the authkey.
    """
    from dmp.managers import SyncManager

    target = _config.resolve(address, authkey)
    manager = SyncManager(address=target.address, authkey=target.authkey)
    if target.address is None:
        manager.start()
    else:
        manager.connect()
    return manager


def cpu_count() -> int:
    """Number of CPUs on this host (as multiprocessing.cpu_count)."""
    return _mp.cpu_count()


def connect(address: object, authkey: bytes | str | None = None) -> None:
    """Make ``address`` the default cluster for the rest of this process.

    Raises:
        ValueError: ``address`` is not a valid dmp address.
    """
    from dmp.wire.address import normalize_address

    _config.set_default(normalize_address(address), _config.authkey_from(authkey))


def freeze_support() -> None:
    """No-op, as on every platform but frozen Windows executables."""


__all__ = [
    "Array",
    "AuthenticationError",
    "Barrier",
    "BoundedSemaphore",
    "BufferTooShort",
    "Condition",
    "Event",
    "Executor",
    "JoinableQueue",
    "LocalCluster",
    "Lock",
    "Manager",
    "ManagerUnavailableError",
    "MessageTooLargeError",
    "Pipe",
    "Pool",
    "Process",
    "ProcessError",
    "Queue",
    "RLock",
    "RawArray",
    "RawValue",
    "RemoteError",
    "Semaphore",
    "SimpleQueue",
    "TaskTimeoutError",
    "TimeoutError",
    "Value",
    "WorkerLostError",
    "active_children",
    "allow_connection_pickling",
    "connect",
    "cpu_count",
    "current_process",
    "freeze_support",
    "get_all_start_methods",
    "get_context",
    "get_logger",
    "get_start_method",
    "log_to_stderr",
    "parent_process",
    "reducer",
    "set_executable",
    "set_forkserver_preload",
    "set_start_method",
    "status",
    "wait_for_workers",
]
