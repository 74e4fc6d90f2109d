"""Proxies: the client side of shared objects (internal; ``dmp.managers`` is the API).

    user thread --proxy.method()--> Connection.request(ObjCall)  (dmp/proxylink.py)
        --> manager --ObjReply--> back to the waiting thread

A proxy unpickled in any process (a forked child, a cluster worker) finds
or makes that process's connection to its manager. The process is one peer
to the manager: it holds the objects it created or called; a proxy
garbage-collected in its creating process releases the object unless it was
ever pickled (someone else may be about to use it); everything a process
holds is released when it leaves or dies.
"""

from __future__ import annotations

import array
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from dmp import serialization
from dmp.client import directlink, proxylink

# The connection API, named here too (dmp.managers, the object host and tests use it).
from dmp.client.proxylink import Connection as Connection
from dmp.client.proxylink import Undo as Undo
from dmp.client.proxylink import connection as connection
from dmp.client.proxylink import forget as forget
from dmp.client.proxylink import key_for as key_for
from dmp.client.proxylink import remember_key as remember_key
from dmp.wire import protocol
from dmp.wire.protocol import ObjStatus

# --- tokens and the base proxy ----------------------------------------------------------------

_live: dict[tuple[str, int], list[int]] = {}  # (address, oid) -> [live proxies, ever pickled]
_live_pid = os.getpid()


def _live_here() -> dict[tuple[str, int], list[int]]:
    """This process's proxy counts (a forked child starts with none: its parent's are not its own)."""
    global _live_pid
    if _live_pid != os.getpid():
        _live.clear()
        _live_pid = os.getpid()
    return _live


_state = threading.local()  # .retain: list collecting oids unpickled (in the object host)


class collecting:
    """In the object host: note the ids of proxies unpickled meanwhile, and keep them."""

    __slots__ = ("retain",)

    def __init__(self, retain: list[int]) -> None:
        self.retain = retain

    def __enter__(self) -> None:
        _state.retain = self.retain

    def __exit__(self, *exc: object) -> None:
        _state.retain = None


class Token:
    """What a proxy needs to find its object: typeid, manager address, id, and kind info."""

    __slots__ = ("address", "id", "info", "typeid")

    def __init__(self, typeid: str, address: str, id: int, info: Any = None) -> None:
        self.typeid, self.address, self.id, self.info = typeid, address, id, info

    def __reduce__(self) -> Any:
        return (Token, (self.typeid, self.address, self.id, self.info))

    def __repr__(self) -> str:
        return f"Token(typeid={self.typeid!r}, address={self.address!r}, id={self.id})"


_ERRORS: dict[str, type[BaseException]] = {
    "Empty": queue.Empty,
    "Full": queue.Full,
    "BrokenBarrierError": threading.BrokenBarrierError,
    "ValueError": ValueError,
    "RuntimeError": RuntimeError,
    "TypeError": TypeError,
    "IndexError": IndexError,
    "AttributeError": AttributeError,
    "ReferenceError": ReferenceError,
}

# typeid -> proxy type, from every register() in this process (a proxy
# unpickled without its manager still builds proxies of method results).
PROXY_TYPES: dict[str, Any] = {}


class BaseProxy:
    """A reference to a shared object; picklable, usable from any process."""

    _exposed_: tuple[str, ...] | None = None
    _method_to_typeid_: dict[str, str] | None = None

    def __init__(
        self,
        token: Token,
        serializer: Any = None,
        manager: Any = None,
        authkey: Any = None,
        exposed: Any = None,
        incref: bool = True,
        manager_owned: bool = False,
    ) -> None:
        self._token = token
        self._manager = manager
        self._exposed = tuple(exposed) if exposed is not None else None
        self._tracked = False
        if authkey is not None:
            proxylink.remember_key_once(token.address, bytes(authkey))
        if incref and not manager_owned:
            self._track()

    @property
    def _id(self) -> int:
        return self._token.id

    def _conn(self) -> Connection:
        return connection(self._token.address)

    def _track(self) -> None:
        count = _live_here().setdefault((self._token.address, self._token.id), [0, 0])
        count[0] += 1
        self._tracked = True

    def __del__(self) -> None:
        if not getattr(self, "_tracked", False):
            return
        try:
            key = (self._token.address, self._token.id)
            live = _live_here()
            count = live.get(key)
            if count is None:
                return
            count[0] -= 1
            if count[0] <= 0:
                del live[key]
                conn = proxylink.existing(self._token.address)
                if not count[1] and conn is not None:
                    conn.direct.pop(self._token.id, None)
                    conn.post(protocol.ObjRelease([self._token.id]))
        except Exception:  # interpreter shutdown: nothing left to tell
            pass

    def __reduce__(self) -> Any:
        count = _live_here().get((self._token.address, self._token.id))
        if count is not None:
            count[1] = 1  # shared: never released by garbage collection here
        auto = getattr(type(self), "_dmp_auto", False)
        return (RebuildProxy, (None if auto else type(self), self._token, self._exposed, auto))

    def __deepcopy__(self, memo: Any) -> Any:
        return self._getvalue()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} object, typeid {self._token.typeid!r} at {id(self):#x}>"

    def __str__(self) -> str:
        try:
            frames = serialization.dumps(((), {}))
            reply, out = self._request(protocol.ObjCall(0, self._token.id, "__repr__"), frames)
            # The object host answers in a payload, the reactor kinds in the reply itself.
            return str(serialization.loads(out) if out else reply.value)
        except Exception:
            return repr(self)[:-1] + "; '__str__()' failed>"

    # --- calls ---

    def _request(self, msg: Any, frames: Sequence[Any] = (), undo: Undo | None = None) -> tuple[Any, list[Any]]:
        reply, out = self._conn().request(msg, frames, undo)
        if reply.status == ObjStatus.OK:
            return reply, out
        if reply.status == ObjStatus.RAISED:
            raise serialization.load_exception(out)
        name, text = reply.value if isinstance(reply.value, list) and len(reply.value) == 2 else ("RuntimeError", str(reply.value))
        raise _ERRORS.get(name, RuntimeError)(text) if text else _ERRORS.get(name, RuntimeError)()

    def _callmethod(self, methodname: str, args: Sequence[Any] = (), kwds: dict[str, Any] | None = None) -> Any:
        """Call ``methodname`` on the object in the object host; its exception is raised here."""
        frames = serialization.dumps((tuple(args), dict(kwds or {})))
        oid = self._token.id
        conn = self._conn()
        address = conn.direct.get(oid)
        if address is not None:
            got = directlink.call(address, conn.key, oid, methodname, frames)
            if got is not None:
                reply, out = got
                if reply.status == ObjStatus.RAISED:
                    raise serialization.load_exception(out)
                return serialization.loads(out) if out else None
        reply, out = self._request(protocol.ObjCall(0, oid, methodname), frames)
        if reply.direct:  # the manager holds this object for us: later calls may go straight to its host
            conn.direct[reply.oid or oid] = reply.direct
        if reply.oid:  # method_to_typeid made a new object: value is [typeid, exposed]
            typeid, exposed = reply.value
            return make_proxy(Token(typeid, self._token.address, reply.oid), exposed, self._manager)
        return serialization.loads(out) if out else None

    def _getvalue(self) -> Any:
        return self._callmethod("#GETVALUE")


def make_proxy(token: Token, exposed: Any, manager: Any = None, incref: bool = True) -> BaseProxy:
    """A proxy of the registered type for ``token.typeid`` (an AutoProxy if none)."""
    proxytype = PROXY_TYPES.get(token.typeid)
    if manager is not None:
        reg = manager._registry.get(token.typeid)
        if reg is not None:
            proxytype = reg.proxytype
    if proxytype is None or proxytype is AutoProxy:
        return AutoProxy(token, manager=manager, exposed=exposed, incref=incref)
    return proxytype(token, manager=manager, exposed=exposed, incref=incref)  # type: ignore[no-any-return]


def RebuildProxy(proxytype: Any, token: Token, exposed: Any, auto: bool = False) -> BaseProxy:
    """Unpickle a proxy. In the object host it is kept (held by the host), not tracked."""
    retain = getattr(_state, "retain", None)
    incref = retain is None
    if retain is not None:
        retain.append(token.id)
    if auto:
        return AutoProxy(token, exposed=exposed, incref=incref)
    return proxytype(token, exposed=exposed, incref=incref)  # type: ignore[no-any-return]


def MakeProxyType(name: str, exposed: Sequence[str], _cache: dict[tuple[str, tuple[str, ...]], type] = {}) -> type:  # noqa: B006
    """A BaseProxy subclass whose methods forward to ``exposed`` methods (cached)."""
    exposed = tuple(exposed)
    try:
        return _cache[(name, exposed)]
    except KeyError:
        pass
    namespace: dict[str, Any] = {}
    for meth in exposed:
        namespace[meth] = _forwarder(meth)
    cls = type(name, (BaseProxy,), namespace)
    cls._exposed_ = exposed  # type: ignore[attr-defined]
    _cache[(name, exposed)] = cls
    return cls


def _forwarder(meth: str) -> Callable[..., Any]:
    def method(self: BaseProxy, /, *args: Any, **kwds: Any) -> Any:
        return self._callmethod(meth, args, kwds)

    method.__name__ = meth
    return method


def AutoProxy(token: Token, serializer: Any = None, manager: Any = None, authkey: Any = None,
              exposed: Any = None, incref: bool = True, manager_owned: bool = False) -> BaseProxy:
    """A proxy built from the exposed methods the object host reported."""
    cls = MakeProxyType(f"AutoProxy[{token.typeid}]", tuple(exposed or ()))
    cls._dmp_auto = True  # type: ignore[attr-defined]
    return cls(token, manager=manager, exposed=exposed, incref=incref, manager_owned=manager_owned)  # type: ignore[no-any-return]


# --- proxies of the host kinds (as in multiprocessing.managers) -----------------------------------


class IteratorProxy(BaseProxy):
    _exposed_: tuple[str, ...] = ("__next__", "send", "throw", "close")

    def __iter__(self) -> IteratorProxy:
        return self

    def __next__(self, *args: Any) -> Any:
        return self._callmethod("__next__", args)

    def send(self, *args: Any) -> Any:
        return self._callmethod("send", args)

    def throw(self, *args: Any) -> Any:
        return self._callmethod("throw", args)

    def close(self, *args: Any) -> Any:
        return self._callmethod("close", args)


class NamespaceProxy(BaseProxy):
    _exposed_: tuple[str, ...] = ("__getattribute__", "__setattr__", "__delattr__")

    def __getattr__(self, key: str) -> Any:
        if key[0] == "_":
            return object.__getattribute__(self, key)
        return object.__getattribute__(self, "_callmethod")("__getattribute__", (key,))

    def __setattr__(self, key: str, value: Any) -> None:
        if key[0] == "_":
            object.__setattr__(self, key, value)
            return
        object.__getattribute__(self, "_callmethod")("__setattr__", (key, value))

    def __delattr__(self, key: str) -> None:
        if key[0] == "_":
            object.__delattr__(self, key)
            return
        object.__getattribute__(self, "_callmethod")("__delattr__", (key,))


_BaseListProxy: Any = MakeProxyType("BaseListProxy", (
    "__add__", "__contains__", "__delitem__", "__getitem__", "__len__", "__mul__", "__reversed__",
    "__rmul__", "__setitem__", "append", "count", "extend", "index", "insert", "pop", "remove",
    "reverse", "sort", "__imul__",
))


class ListProxy(_BaseListProxy):  # type: ignore[misc]
    def __iadd__(self, value: Any) -> ListProxy:
        self._callmethod("extend", (value,))
        return self

    def __imul__(self, value: Any) -> ListProxy:
        self._callmethod("__imul__", (value,))
        return self


_BaseDictProxy: Any = MakeProxyType("DictProxy", (
    "__contains__", "__delitem__", "__getitem__", "__iter__", "__len__", "__setitem__", "clear",
    "copy", "get", "items", "keys", "pop", "popitem", "setdefault", "update", "values",
))


class DictProxy(_BaseDictProxy):  # type: ignore[misc]
    _method_to_typeid_ = {"__iter__": "Iterator"}


_BasePoolProxy: Any = MakeProxyType("PoolProxy", (
    "apply", "apply_async", "close", "imap", "imap_unordered", "join", "map", "map_async",
    "starmap", "starmap_async", "terminate",
))


class PoolProxy(_BasePoolProxy):  # type: ignore[misc]
    _method_to_typeid_ = {
        "apply_async": "AsyncResult", "map_async": "AsyncResult", "starmap_async": "AsyncResult",
        "imap": "Iterator", "imap_unordered": "Iterator",
    }

    def __enter__(self) -> PoolProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()


# --- proxies of the reactor kinds ------------------------------------------------------------


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
        msg = protocol.ObjCall(0, self._token.id, method, args or [], timeout, threading.get_ident())
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
        self._call("put", None, serialization.dumps(obj), _timeout(block, timeout))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return serialization.loads(self._call("get", None, (), _timeout(block, timeout))[1])

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
        return serialization.loads(self._call("get")[1])

    def set(self, value: Any) -> None:
        self._call("set", None, serialization.dumps(value))

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
