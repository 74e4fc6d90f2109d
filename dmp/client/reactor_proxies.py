"""Proxies of the reactor kinds: Queue, Lock, Event, Value, ... served by the manager's own state machines.

    proxy.method(args) --ObjCall(method, plain args, timeout, thread)--> manager
        reactor state machine (dmp_server.shared_data / shared_sync): answers
        now, or parks the call until woken or timed out --ObjReply-->

Arguments and answers are plain data; queue items and a Value travel as
opaque pickled frames, an Array as raw ``array.array`` bytes. A blocking
call's timeout travels with it (-1: wait forever, 0: do not wait). The base
proxy, tokens and the object host's proxies are in dmp.client.proxies.
"""

from __future__ import annotations

import array
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from dmp.client import doorlink
from dmp.client.proxies import BaseProxy, Undo, raise_for
from dmp.wire import protocol
from dmp.wire.protocol import ObjStatus


def _timeout(block: bool, timeout: float | None) -> float:
    if not block:
        return 0.0
    if timeout is None:
        return -1.0
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    return float(timeout)


class _ReactorProxy(BaseProxy):
    """Calls answered by the manager's own state machines: plain arguments, opaque items.

    ``_undo_`` names, per method, the call that takes back its effect when
    the reply comes after the caller was interrupted (see Connection.request):
    """

    _undo_: dict[str, Undo] = {}

    def _call(self, method: str, args: list[Any] | None = None, frames: Sequence[Any] = (), timeout: float = -1.0) -> tuple[Any, list[Any]]:
        token = self._token
        got = doorlink.call(token.address, token.id, method, args or [], frames, timeout, self._undo_.get(method))
        if got is not None:  # through the manager's door (the usual case on its machine)
            status, value, out = got
            if status != ObjStatus.OK:
                raise_for(protocol.ObjReply(0, status, value), out)
            return value, out
        msg = protocol.ObjCall(0, token.id, method, args or [], timeout, threading.get_ident())
        reply, out = self._request(msg, frames, self._undo_.get(method))
        return reply.value, out

    def _value(self, method: str, args: list[Any] | None = None, timeout: float = -1.0) -> Any:
        return self._call(method, args, (), timeout)[0]


class QueueProxy(_ReactorProxy):
    _exposed_: tuple[str, ...] = ("put", "get", "put_nowait", "get_nowait", "qsize", "empty", "full")
    # an item got for nobody goes back first in line (uncounted in a JoinableQueue);
    # an interrupted put that went in stays in (nothing is lost either way)
    _undo_ = {"get": Undo("unget")}

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        wait = -1.0 if block and timeout is None else _timeout(block, timeout)
        self._call("put", None, self._dumps(obj), wait)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        wait = -1.0 if block and timeout is None else _timeout(block, timeout)
        return self._loads(self._call("get", None, (), wait)[1])

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, False)

    def get_nowait(self) -> Any:
        return self.get(False)

    def qsize(self) -> int:
        return int(self._value("qsize"))

    def empty(self) -> bool:
        return bool(self._value("empty"))

    def full(self) -> bool:
        return bool(self._value("full"))


class JoinableQueueProxy(QueueProxy):
    _exposed_: tuple[str, ...] = (*QueueProxy._exposed_, "task_done", "join")

    def task_done(self) -> None:
        self._value("task_done")

    def join(self) -> None:
        self._value("join")


def _acquire_timeout(blocking: bool, timeout: float | None) -> float:
    if timeout is None or timeout == -1:
        return -1.0 if blocking else 0.0
    if not blocking:
        raise ValueError("can't specify a timeout for a non-blocking call")
    if timeout < 0:
        raise ValueError("timeout value must be a non-negative number")
    return float(timeout)


class AcquirerProxy(_ReactorProxy):
    _exposed_: tuple[str, ...] = ("acquire", "release")
    _undo_ = {"acquire": Undo("release", only_if_true=True)}

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        return bool(self._value("acquire", None, _acquire_timeout(blocking, timeout)))

    def release(self) -> None:
        self._value("release")

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class LockProxy(AcquirerProxy):
    _exposed_: tuple[str, ...] = ("acquire", "release", "locked")

    def locked(self) -> bool:
        return bool(self._value("locked"))


class SemaphoreProxy(AcquirerProxy):
    _exposed_: tuple[str, ...] = ("acquire", "release", "get_value")

    def release(self, n: int = 1) -> None:
        self._value("release", [n])

    def get_value(self) -> int:
        return int(self._value("get_value"))


class ConditionProxy(AcquirerProxy):
    _exposed_: tuple[str, ...] = ("acquire", "release", "wait", "notify", "notify_all")
    # wait() takes the lock back whatever it answers: an interrupted wait leaves it released
    _undo_ = {"acquire": Undo("release", only_if_true=True), "wait": Undo("release")}

    def wait(self, timeout: float | None = None) -> bool:
        return bool(self._value("wait", None, _timeout(True, timeout)))

    def __exit__(self, *exc: Any) -> None:
        try:
            self.release()
        except RuntimeError:
            if exc[0] is None:
                raise
            # An interrupted wait() left the lock released: let the interruption through as it is.

    def notify(self, n: int = 1) -> None:
        self._value("notify", [n])

    def notify_all(self) -> None:
        self._value("notify_all")

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        import time

        result = predicate()
        if result:
            return result
        endtime = None if timeout is None else time.monotonic() + timeout
        waittime = timeout
        while not result:
            if endtime is not None:
                waittime = endtime - time.monotonic()
                if waittime <= 0:
                    break
            self.wait(waittime)
            result = predicate()
        return result


class EventProxy(_ReactorProxy):
    _exposed_: tuple[str, ...] = ("is_set", "set", "clear", "wait")

    def is_set(self) -> bool:
        return bool(self._value("is_set"))

    def set(self) -> None:
        self._value("set")

    def clear(self) -> None:
        self._value("clear")

    def wait(self, timeout: float | None = None) -> bool:
        return bool(self._value("wait", None, _timeout(True, timeout)))


class BarrierProxy(_ReactorProxy):
    _exposed_: tuple[str, ...] = ("wait", "abort", "reset", "parties", "n_waiting", "broken")

    def wait(self, timeout: float | None = None) -> int:
        return int(self._value("wait", None, _timeout(True, timeout)))

    def abort(self) -> None:
        self._value("abort")

    def reset(self) -> None:
        self._value("reset")

    @property
    def parties(self) -> int:
        return int(self._value("parties"))

    @property
    def n_waiting(self) -> int:
        return int(self._value("n_waiting"))

    @property
    def broken(self) -> bool:
        return bool(self._value("broken"))


class ValueProxy(_ReactorProxy):
    _exposed_: tuple[str, ...] = ("get", "set")

    def get(self) -> Any:
        return self._loads(self._call("get")[1])

    def set(self, value: Any) -> None:
        self._call("set", None, self._dumps(value))

    value = property(get, set)

    def _getvalue(self) -> Any:
        return self.get()


def _index(index: Any) -> list[Any]:
    if isinstance(index, slice):
        return ["s", index.start, index.stop, index.step]
    if isinstance(index, int) or hasattr(index, "__index__"):
        return ["i", int(index.__index__())]
    raise TypeError("array indices must be integers")


class ArrayProxy(_ReactorProxy):
    """An array.array of ``typecode`` in the manager, as raw bytes."""

    _exposed_: tuple[str, ...] = ("__len__", "__getitem__", "__setitem__")

    def __len__(self) -> int:
        return int(self._value("len"))

    def __getitem__(self, index: Any) -> Any:
        items = array.array(self._token.info)
        items.frombytes(self._call("getitem", _index(index))[1][0])
        return items if isinstance(index, slice) else items[0]

    def __setitem__(self, index: Any, value: Any) -> None:
        code = self._token.info
        if isinstance(index, slice):
            if not isinstance(value, array.array):
                raise TypeError(f'can only assign array (not "{type(value).__name__}") to array slice')
            data = array.array(code, value).tobytes()
        else:
            data = array.array(code, [value]).tobytes()
        self._call("setitem", _index(index), [data])

    def _getvalue(self) -> array.array[Any]:
        return self[:]  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Any]:
        return iter(self[:])

    def tolist(self) -> list[Any]:
        return list(self[:])
