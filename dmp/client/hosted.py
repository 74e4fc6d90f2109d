"""Managed objects that run in the object host because they run user code or
start processes: a ``Barrier`` with an ``action`` (the action runs in the host,
as multiprocessing runs it in the manager process) and a ``Pool``."""

from __future__ import annotations

import multiprocessing
import threading
from multiprocessing import util
from typing import Any

from dmp.client.proxies import BaseProxy


def pool(*args: Any, **kwds: Any) -> Any:
    """``manager.Pool()``: a dmp local pool whose workers are the object host's children."""
    from dmp.client.pool import Pool

    # The host is a daemonic process (so that it never outlives its manager),
    # and multiprocessing forbids daemonic processes to have children; the
    # host's lifeline, not the daemon flag, ends it and its pools' workers.
    multiprocessing.current_process()._config["daemon"] = False  # type: ignore[attr-defined]
    made = Pool(*args, **kwds)
    # Ended (workers killed and reaped) before the host's exit joins its children.
    util.Finalize(made, made.terminate, exitpriority=10)
    return made


class ActionBarrier:
    """threading.Barrier with its read-only attributes as methods (callable through a proxy)."""

    def __init__(self, parties: int, action: Any = None, timeout: float | None = None) -> None:
        self._barrier = threading.Barrier(parties, action, timeout)

    def wait(self, timeout: float | None = None) -> int:
        return self._barrier.wait(timeout)

    def abort(self) -> None:
        self._barrier.abort()

    def reset(self) -> None:
        self._barrier.reset()

    def parties(self) -> int:
        return self._barrier.parties

    def n_waiting(self) -> int:
        return self._barrier.n_waiting

    def broken(self) -> bool:
        return self._barrier.broken


class ActionBarrierProxy(BaseProxy):
    """The proxy of an :class:`ActionBarrier`: multiprocessing's BarrierProxy API."""

    _exposed_: tuple[str, ...] = ("__getattribute__", "wait", "abort", "reset", "parties", "n_waiting", "broken")

    def wait(self, timeout: float | None = None) -> int:
        """Raises: threading.BrokenBarrierError, as threading.Barrier.wait."""
        return int(self._callmethod("wait", (timeout,)))

    def abort(self) -> None:
        self._callmethod("abort")

    def reset(self) -> None:
        self._callmethod("reset")

    @property
    def parties(self) -> int:
        return int(self._callmethod("parties"))

    @property
    def n_waiting(self) -> int:
        return int(self._callmethod("n_waiting"))

    @property
    def broken(self) -> bool:
        return bool(self._callmethod("broken"))
