"""Start methods and context objects: multiprocessing's ``get_context`` API on dmp.

The start method says how *local* workers and processes start (``fork``,
``spawn`` or ``forkserver``, as in multiprocessing); in cluster mode it does
not apply: tasks run in the nodes' workers. A context object offers the
module's API with its start method fixed.
"""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

METHODS = ("fork", "spawn", "forkserver")

_method: str | None = None
_lock = threading.Lock()


def _check(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"cannot find context for {method!r}: dmp supports {', '.join(METHODS)}")
    return method


def get_start_method(allow_none: bool = False) -> str | None:
    """The start method of local workers; fixed to ``"fork"`` on first use, as in multiprocessing."""
    global _method
    with _lock:
        if _method is None and not allow_none:
            _method = "fork"
        return _method


def set_start_method(method: str | None, force: bool = False) -> None:
    """Choose how local workers and processes start.

    Raises:
        RuntimeError: the start method was already fixed and ``force`` is false.
        ValueError: ``method`` is not ``"fork"``, ``"spawn"`` or ``"forkserver"``.
    """
    global _method
    with _lock:
        if _method is not None and not force:
            raise RuntimeError("context has already been set")
        if method is None and force:
            _method = None
            return
        _method = _check(str(method))


def get_all_start_methods() -> list[str]:
    """The start methods dmp honours in local mode: ``["fork", "spawn", "forkserver"]``."""
    return list(METHODS)


def stdlib_context(method: str | None = None) -> Any:
    """The standard library's context for ``method`` (default: the current start method)."""
    return multiprocessing.get_context(method or get_start_method())


def get_context(method: str | None = None) -> DmpContext:
    """A context object: dmp's API with start method ``method``.

    Raises:
        ValueError: ``method`` is not ``"fork"``, ``"spawn"`` or ``"forkserver"``.
    """
    if method is None:
        return _DEFAULT
    return DmpContext(_check(method))


# Names a context serves from the stdlib context of its method in local mode
# (from the cluster's manager in cluster mode, as the module does).
_PRIMITIVES = frozenset(
    ["Array", "Barrier", "BoundedSemaphore", "Condition", "Event", "JoinableQueue", "Lock", "Pipe",
     "Queue", "RLock", "Semaphore", "SimpleQueue", "Value"]
)


class DmpContext:
    """``dmp`` with its start method fixed (what ``dmp.get_context(method)`` returns)."""

    def __init__(self, method: str | None) -> None:
        self._name = method

    def get_start_method(self, allow_none: bool = False) -> str | None:
        return self._name if self._name is not None else get_start_method(allow_none)

    def get_context(self, method: str | None = None) -> DmpContext:
        return get_context(method) if method is not None else self

    def set_start_method(self, method: str | None, force: bool = False) -> None:
        if self._name is not None:
            raise ValueError("cannot set start method of concrete context")
        set_start_method(method, force)

    @property
    def Process(self) -> type:
        from dmp.client import process

        return process.process_class(self.get_start_method())

    def Pool(self, processes: int | None = None, initializer: Any = None, initargs: Any = (),
             maxtasksperchild: int | None = None, **kwargs: Any) -> Any:
        from dmp.client.pool import Pool

        return Pool(processes, initializer, initargs, maxtasksperchild, self, **kwargs)

    def __getattr__(self, name: str) -> Any:
        import dmp
        from dmp.client import primitives

        if name in _PRIMITIVES:
            factory = getattr(primitives, name)

            def make(*args: Any, **kwargs: Any) -> Any:
                with primitives.local_method(self.get_start_method()):
                    return factory(*args, **kwargs)

            make.__name__ = name
            return make
        if name.startswith("_") or name not in dmp.__all__:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(dmp, name)

    def __repr__(self) -> str:
        return f"<dmp context {self._name or 'default'}>"


_DEFAULT = DmpContext(None)


# The rest of multiprocessing's module-level API, which dmp shares as is:
# logging (the "multiprocessing" logger), the spawn executable, the
# forkserver's preloaded modules and the pickler of connections and sockets.
get_logger = multiprocessing.get_logger
"""``multiprocessing.get_logger``: the ``"multiprocessing"`` logger, which dmp's local workers share."""
log_to_stderr = multiprocessing.log_to_stderr
"""``multiprocessing.log_to_stderr``: send that logger's records to stderr."""
set_executable = multiprocessing.set_executable
"""``multiprocessing.set_executable``: the Python that ``"spawn"`` workers run."""
set_forkserver_preload = multiprocessing.set_forkserver_preload
"""``multiprocessing.set_forkserver_preload``: modules the fork server imports once."""
allow_connection_pickling = multiprocessing.allow_connection_pickling
"""``multiprocessing.allow_connection_pickling``: let connections and sockets be pickled (a no-op today)."""
reducer = multiprocessing.reducer
"""``multiprocessing.reducer``: the module that pickles what crosses between local processes."""
