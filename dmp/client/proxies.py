"""Proxies: the client side of shared objects (internal; ``dmp.managers`` is the API).

    user thread --proxy.method()--> Connection.request(ObjCall)  (dmp/proxylink.py)
        --> manager --ObjReply--> back to the waiting thread

A proxy unpickled in any process (a forked child, a cluster worker) finds
or makes that process's connection to its manager. The process is one peer
to the manager: it holds the objects it created or called; a proxy
garbage-collected in its creating process releases the object unless it was
ever pickled (someone else may be about to use it); everything a process
holds is released when it leaves or dies.

Here: tokens, the base proxy and the proxies of the object host's kinds
(dict, list, Namespace, Pool, iterators, registered types); the proxies of
the manager's own kinds (Queue, Lock, Event, Value, ...) are in
dmp.client.reactor_proxies.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from dmp import _pid, serialization
from dmp.client import directlink, proxylink

# The connection API, named here too (dmp.managers, the object host and tests use it).
from dmp.client.proxylink import Connection as Connection
from dmp.client.proxylink import Undo as Undo
from dmp.client.proxylink import connection as connection
from dmp.client.proxylink import forget as forget
from dmp.client.proxylink import key_for as key_for
from dmp.client.proxylink import remember_key as remember_key
from dmp.client.xmlserial import xml_roundtrip
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


def raise_for(reply: Any, out: list[Any]) -> None:
    """Raise what a failed ObjReply says: the object's own exception (RAISED),
    or the error the manager named (FAILED: ``[name, text]``); nothing if OK."""
    if reply.status == ObjStatus.OK:
        return
    if reply.status == ObjStatus.RAISED:
        raise serialization.load_exception(out)
    name, text = reply.value if isinstance(reply.value, list) and len(reply.value) == 2 else ("RuntimeError", str(reply.value))
    raise _ERRORS.get(name, RuntimeError)(text) if text else _ERRORS.get(name, RuntimeError)()


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
        self._serializer = "xmlrpclib" if serializer == "xmlrpclib" else "pickle"
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
        return (RebuildProxy, (None if auto else type(self), self._token, self._exposed, auto, self._serializer))

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

    def _dumps(self, obj: Any) -> list[Any]:
        """The payload frames of a value sent to the shared object (see xml_roundtrip)."""
        return serialization.dumps(xml_roundtrip(obj) if self._serializer == "xmlrpclib" else obj)

    def _loads(self, frames: list[Any]) -> Any:
        obj = serialization.loads(frames)
        return xml_roundtrip(obj) if self._serializer == "xmlrpclib" else obj

    def _request(self, msg: Any, frames: Sequence[Any] = (), undo: Undo | None = None) -> tuple[Any, list[Any]]:
        reply, out = self._conn().request(msg, frames, undo)
        raise_for(reply, out)
        return reply, out

    def _callmethod(self, methodname: str, args: Sequence[Any] = (), kwds: dict[str, Any] | None = None) -> Any:
        """Call ``methodname`` on the object in the object host; its exception is raised here."""
        if type(methodname) is not str:  # else the host drops the connection as malformed
            raise TypeError(f"method name must be a str, not {type(methodname).__name__}")
        if self._serializer == "xmlrpclib":
            args, kwds = xml_roundtrip(list(args)), xml_roundtrip(dict(kwds or {}))
        frames = serialization.dumps_quick((tuple(args), dict(kwds) if kwds else {}))
        token = self._token
        oid = token.id
        conn = proxylink._conns.get(token.address)  # connection()'s usual case, inline
        if conn is None or conn.closed is not None or proxylink._conns_pid != _pid.here:
            conn = connection(token.address)
        address = conn.direct.get(oid)
        if address is not None:
            got = directlink.call(address, conn.key, oid, methodname, frames)
            if got is not None:
                status, out = got
                if status == ObjStatus.RAISED:
                    raise serialization.load_exception(out)
                return serialization.loads(out) if out else None
        reply, out = self._request(protocol.ObjCall(0, oid, methodname), frames)
        if reply.direct:  # the manager holds this object for us: later calls may go straight to its host
            conn.direct[reply.oid or oid] = reply.direct
        if reply.oid:  # method_to_typeid made a new object: value is [typeid, exposed]
            typeid, exposed = reply.value
            token = Token(typeid, self._token.address, reply.oid)
            return make_proxy(token, exposed, self._manager, serializer=self._serializer)
        return self._loads(out) if out else None

    def _getvalue(self) -> Any:
        return self._callmethod("#GETVALUE")


def make_proxy(token: Token, exposed: Any, manager: Any = None, incref: bool = True, serializer: str = "pickle") -> BaseProxy:
    """A proxy of the registered type for ``token.typeid`` (an AutoProxy if none)."""
    proxytype = PROXY_TYPES.get(token.typeid)
    if manager is not None:
        reg = manager._registry.get(token.typeid)
        if reg is not None:
            proxytype = reg.proxytype
    if proxytype is None or proxytype is AutoProxy:
        return AutoProxy(token, serializer, manager=manager, exposed=exposed, incref=incref)
    return proxytype(token, serializer, manager=manager, exposed=exposed, incref=incref)  # type: ignore[no-any-return]


def RebuildProxy(proxytype: Any, token: Token, exposed: Any, auto: bool = False, serializer: str = "pickle") -> BaseProxy:
    """Unpickle a proxy. In the object host it is kept (held by the host), not tracked."""
    retain = getattr(_state, "retain", None)
    incref = retain is None
    if retain is not None:
        retain.append(token.id)
    if auto:
        return AutoProxy(token, serializer, exposed=exposed, incref=incref)
    return proxytype(token, serializer, exposed=exposed, incref=incref)  # type: ignore[no-any-return]


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
    return cls(token, serializer, manager=manager, exposed=exposed, incref=incref, manager_owned=manager_owned)  # type: ignore[no-any-return]


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
