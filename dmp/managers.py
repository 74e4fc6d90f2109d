"""``multiprocessing.managers`` on the dmp manager: BaseManager, SyncManager, Server.

    BaseManager.start() --fork--> manager process: the dmp_server reactor
        (ipc:// by default, or the address given); on first need it forks the
        object host, which inherits this process's registered callables
    BaseManager.connect() / dmp.Manager(address=...) --> a running manager:
        a `dmp manager` daemon, another start()-ed manager, or serve_forever()
    manager.Queue() / Lock() / Event() ... --ObjCreate(kind)--> reactor state machine
    manager.dict() / list() / Namespace() / Pool() / registered typeid
        --ObjCreate("host")--> object host; the callable travels with cloudpickle
        when the host may not have it (a daemon that never saw the user's code)
    proxy.method() --ObjCall--> (see dmp.client.proxies)
"""

from __future__ import annotations

import array
import enum
import multiprocessing
import multiprocessing.managers
import os
import signal
import threading
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

from dmp import _config, serialization
from dmp.client import hosted, proxies, proxylink
from dmp.client.proxies import (
    AcquirerProxy,
    ArrayProxy,
    AutoProxy,
    BarrierProxy,
    BaseProxy,
    ConditionProxy,
    DictProxy,
    EventProxy,
    IteratorProxy,
    JoinableQueueProxy,
    ListProxy,
    LockProxy,
    MakeProxyType,
    NamespaceProxy,
    PoolProxy,
    QueueProxy,
    SemaphoreProxy,
    Token,
    ValueProxy,
)
from dmp.errors import ManagerUnavailableError, ProcessError
from dmp.node import objhost
from dmp.wire import protocol, transport
from dmp.wire.address import is_loopback, normalize_address

__all__ = [
    "AutoProxy",
    "BaseManager",
    "BaseProxy",
    "MakeProxyType",
    "Namespace",
    "RemoteError",
    "Server",
    "SyncManager",
    "Token",
]

RemoteError = multiprocessing.managers.RemoteError
"""``multiprocessing.managers.RemoteError`` itself: a manager-side failure of a call (an unexposed method, ...)."""
Namespace = multiprocessing.managers.Namespace
"""``multiprocessing.managers.Namespace`` itself: what ``SyncManager.Namespace()`` hosts."""
_fork = multiprocessing.get_context("fork")
# Seconds start() waits for the forked manager process to say where it listens.
START_TIMEOUT_S = 30.0
# Typeids every object host knows itself: their callables never travel.
_HOST_BUILTINS = frozenset({"dict", "list", "Namespace", "Pool", "Iterator", "AsyncResult", "ActionBarrier"})


class State(enum.Enum):
    INITIAL = 0
    STARTED = 1
    SHUTDOWN = 2


class ReactorKind:
    """A typeid the manager serves itself; turns constructor arguments into plain data."""

    def __init__(self, kind: str, encode: Any) -> None:
        self.kind = kind
        self.encode = encode  # (*args, **kwds) -> (plain args, payload frames, token info)

    def __repr__(self) -> str:
        return f"<dmp reactor kind {self.kind}>"


def _no_args() -> tuple[list[Any], list[Any], Any]:
    return [], [], None


def _queue(maxsize: int = 0) -> tuple[list[Any], list[Any], Any]:
    return [int(maxsize)], [], None


def _semaphore(value: int = 1) -> tuple[list[Any], list[Any], Any]:
    if value < 0:
        raise ValueError("semaphore initial value must be >= 0")
    return [int(value)], [], None


def _condition(lock: Any = None) -> tuple[list[Any], list[Any], Any]:
    if lock is not None:
        raise TypeError("a managed Condition has its own lock in dmp; lock= is not supported")
    return [], [], None


def _barrier(parties: int, action: Any = None, timeout: float | None = None) -> tuple[list[Any], list[Any], Any]:
    if action is not None:  # SyncManager.Barrier sends these to the object host instead
        raise TypeError("the manager's reactor Barrier runs no action")
    return [int(parties), timeout], [], None


def _value(typecode: str, value: Any, lock: Any = True) -> tuple[list[Any], list[Any], Any]:
    return [typecode], serialization.dumps(value), typecode


def _array(typecode: str, sequence: Any, lock: Any = True) -> tuple[list[Any], list[Any], Any]:
    return [typecode], [array.array(typecode, sequence).tobytes()], typecode


@dataclass(frozen=True)
class Registration:
    callable: Any
    exposed: tuple[str, ...] | None
    method_to_typeid: dict[str, str] | None
    proxytype: Any
    create_method: bool = True


class Server:
    """What ``get_server()`` returns: ``serve_forever()`` runs the manager in this process."""

    def __init__(self, registry: dict[str, Registration], address: str, authkey: bytes | None) -> None:
        self.registry = registry
        self.address = address
        self.authkey = authkey
        self._daemon: Any = None

    def serve_forever(self) -> None:
        """Serve until SIGINT or SIGTERM (or :meth:`stop` from another thread).

        Raises:
            ValueError: a non-loopback address without an authkey.
        """
        daemon = _make_daemon(self.registry, self.address, self.authkey)
        self._daemon = daemon
        self.address = daemon.endpoints[0]
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: daemon.stop())
        try:
            daemon.run()
        finally:
            daemon.objects.launcher.stop()
            for sig, handler in previous.items():  # the caller's handlers again (Ctrl-C raises as before)
                signal.signal(sig, handler)

    def stop(self) -> None:
        """Make :meth:`serve_forever` return (from another thread). Never raises."""
        if self._daemon is not None:
            self._daemon.stop()


def _make_daemon(registry: dict[str, Registration], address: str, key: bytes | None) -> Any:
    from dmp_server.daemon import Daemon

    if key is None and not is_loopback(address):
        raise ValueError(
            f"refusing to serve {address} without an authkey: anyone who can reach it could run "
            "code in the object host. Pass authkey=..., set DMP_AUTHKEY, or bind to 127.0.0.1."
        )
    daemon = Daemon(bind=[address], key=key)
    daemon.objects.launcher = objhost.ForkLauncher(daemon.host_endpoint, key, registry, daemon.endpoints[0])
    return daemon


def _run_server(registry: dict[str, Registration], address: str, key: bytes | None, writer: Any,
                initializer: Any, initargs: tuple[Any, ...]) -> None:
    """The body of the manager process that start() forks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the user's process, as in multiprocessing
    transport.forget_context_after_fork()
    if initializer is not None:
        initializer(*initargs)
    try:
        daemon = _make_daemon(registry, address, key)
    except Exception as exc:
        writer.send(("error", f"{type(exc).__name__}: {exc}"))
        writer.close()
        return
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    writer.send(("ok", daemon.endpoints[0]))
    writer.close()
    try:
        daemon.run()
    finally:
        daemon.objects.launcher.stop()


def _finalize_manager(process: Any, address: str, creator: int, timeout: float) -> None:
    if os.getpid() != creator:
        return  # a forked child must not stop its parent's manager
    proxies.forget(address)
    if process.exitcode is None:
        try:
            os.kill(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join(timeout)


class BaseManager:
    """Serve or reach shared objects: ``start()`` a manager process, or ``connect()`` to one.

    ``address`` is a ``(host, port)`` tuple or a ZeroMQ endpoint (``tcp://host:port``,
    ``ipc://path``); ``authkey`` defaults to ``DMP_AUTHKEY``, and start() without
    either address or key makes a random key, as multiprocessing does.
    """

    _registry: dict[str, Registration] = {}

    def __init__(self, address: Any = None, authkey: bytes | str | None = None, serializer: str = "pickle",
                 ctx: Any = None, *, shutdown_timeout: float = 1.0) -> None:
        self._address = _bind_address(address) if address is not None else None
        self._authkey = _config.authkey_from(authkey)
        if serializer not in ("pickle", "xmlrpclib"):
            raise ValueError(f"unknown serializer {serializer!r}: dmp's managers take 'pickle' or 'xmlrpclib'")
        # Both travel as cloudpickle payloads on ZeroMQ: what xmlrpclib can
        # carry is a subset of what pickle can.
        self._serializer = serializer
        self._state = State.INITIAL
        self._process: Any = None
        self._finalizer: Any = None
        self._shutdown_timeout = shutdown_timeout

    @property
    def address(self) -> str | None:
        """Where the manager listens: a ZeroMQ endpoint string, or None before ``start()`` picked one."""
        return self._address

    def get_server(self) -> Server:
        """A :class:`Server` for this manager's address, to run in this process.

        Raises:
            ProcessError: the manager was already started or connected.
            ValueError: the manager has no address to serve on.
        """
        if self._state != State.INITIAL:
            raise ProcessError(f"manager is {self._state.name.lower()}, cannot get_server()")
        if self._address is None:
            raise ValueError("get_server() needs an address to serve on")
        return Server(self._registry, self._address, self._authkey)

    def connect(self) -> None:
        """Connect to a running manager at ``address``.

        Raises:
            ValueError: the manager has no address.
            ManagerUnavailableError: nothing answered within the connect timeout.
            AuthenticationError: the manager refused our authkey.
        """
        if self._address is None:
            raise ValueError("connect() needs an address")
        address = _connect_address(self._address)
        conn = proxylink.existing(address)
        if conn is not None and self._authkey is not None and conn.key != self._authkey:
            # This process already talks to that manager with another key:
            # prove ours on a connection of its own (AuthenticationError if refused).
            proxies.Connection(address, self._authkey).close()
        else:
            proxies.connection(address, self._authkey)
        proxies.remember_key(address, self._authkey)  # only once the manager accepted it
        self._address = address
        self._state = State.STARTED

    def start(self, initializer: Any = None, initargs: Any = ()) -> None:
        """Fork a manager process serving this manager's registered types.

        Raises:
            ProcessError: already started or shut down.
            TypeError: ``initializer`` is not callable.
            ManagerUnavailableError: the manager process did not come up.
            ValueError: the manager process could not serve the address
                (in use, malformed, or public without an authkey).
        """
        if self._state == State.STARTED:
            raise ProcessError("Already started server")
        if self._state == State.SHUTDOWN:
            raise ProcessError("Manager has shut down")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        address = self._address or f"ipc://@dmp-manager-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        key = self._authkey
        if key is None and self._address is None:
            key = os.urandom(32)  # only this process and its children know it
        reader, writer = _fork.Pipe(duplex=False)
        process = _fork.Process(
            target=_run_server, args=(self._registry, address, key, writer, initializer, tuple(initargs)),
            name=f"{type(self).__name__}-manager",
        )
        process.start()
        writer.close()
        if not reader.poll(START_TIMEOUT_S):
            process.kill()
            process.join(5)
            raise ManagerUnavailableError(f"the manager process did not start within {START_TIMEOUT_S:g} s")
        status, value = reader.recv()
        reader.close()
        if status != "ok":
            process.join(5)
            raise ValueError(f"the manager process could not serve {address}: {value}")
        self._address, self._authkey, self._process = value, key, process
        proxies.remember_key(value, key)
        self._state = State.STARTED
        self._finalizer = weakref.finalize(
            self, _finalize_manager, process, value, os.getpid(), self._shutdown_timeout
        )

    def shutdown(self) -> None:
        """Stop the manager process this manager started (a connected one only lets go)."""
        if self._finalizer is not None:
            self._finalizer()
        self._state = State.SHUTDOWN

    def join(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds for the manager process this manager started to exit. Never raises."""
        if self._process is not None:
            self._process.join(timeout)

    def __enter__(self) -> BaseManager:
        if self._state == State.INITIAL:
            self.start()
        elif self._state == State.SHUTDOWN:
            raise ProcessError("Unable to start server: manager has shut down")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def _create(self, typeid: str, /, *args: Any, **kwds: Any) -> tuple[Token, Any]:
        if self._state != State.STARTED:
            raise ProcessError("the manager is not started or connected")
        assert self._address is not None
        conn = proxies.connection(self._address, self._authkey)
        reg = self._registry[typeid]
        if isinstance(reg.callable, ReactorKind):
            plain, frames, info = reg.callable.encode(*args, **kwds)
            msg = protocol.ObjCreate(0, reg.callable.kind, typeid, plain)
        else:
            shipped = None if typeid in _HOST_BUILTINS else reg.callable
            to_typeid = reg.method_to_typeid
            try:
                frames = serialization.dumps((shipped, args, kwds, reg.exposed, to_typeid))
            except Exception:  # the host may know the callable itself (it was forked from us)
                frames = serialization.dumps((None, args, kwds, reg.exposed, to_typeid))
            msg, info = protocol.ObjCreate(0, "host", typeid), None
        reply, out = conn.request(msg, frames)
        if reply.status == protocol.ObjStatus.RAISED:
            raise serialization.load_exception(out)
        if reply.status != protocol.ObjStatus.OK:
            name, text = reply.value
            raise proxies._ERRORS.get(name, RuntimeError)(text)
        exposed = reply.value[1] if isinstance(reply.value, list) and len(reply.value) == 2 else reg.exposed
        if reply.direct:
            conn.direct[reply.oid] = reply.direct
        return Token(typeid, self._address, reply.oid, info), exposed

    @classmethod
    def register(cls, typeid: str, callable: Any = None, proxytype: Any = None, exposed: Any = None,
                 method_to_typeid: dict[str, str] | None = None, create_method: bool = True) -> None:
        """Register a type (or callable) under ``typeid``, as ``multiprocessing.managers``.

        With ``create_method``, ``manager.<typeid>(*args, **kwds)`` creates an
        object on the manager and returns a proxy of it; that call raises
        ``ProcessError`` when the manager is not started or connected, the
        object's own exception when creating it failed, and
        ``ManagerUnavailableError`` when the manager went away.

        Raises:
            TypeError: ``method_to_typeid`` does not map str to str.
        """
        if "_registry" not in cls.__dict__:
            cls._registry = cls._registry.copy()
        if proxytype is None:
            proxytype = AutoProxy
        exposed = exposed or getattr(proxytype, "_exposed_", None)
        method_to_typeid = method_to_typeid or getattr(proxytype, "_method_to_typeid_", None)
        if method_to_typeid:
            for key, value in method_to_typeid.items():
                if type(key) is not str or type(value) is not str:
                    raise TypeError(f"method_to_typeid must map str to str, not {key!r}: {value!r}")
        cls._registry[typeid] = Registration(
            callable, tuple(exposed) if exposed is not None else None, method_to_typeid, proxytype, create_method
        )
        proxies.PROXY_TYPES[typeid] = proxytype
        if create_method:

            def temp(self: BaseManager, /, *args: Any, **kwds: Any) -> Any:
                token, exp = self._create(typeid, *args, **kwds)
                return proxytype(token, self._serializer, manager=self, authkey=self._authkey, exposed=exp)

            temp.__name__ = typeid
            temp.__doc__ = f"Create a shared ``{typeid}`` on the manager and return a proxy of it."
            setattr(cls, typeid, temp)


def _bind_address(address: Any) -> str:
    # ("", port) means every interface, as in multiprocessing.
    if isinstance(address, tuple) and len(address) == 2 and address[0] == "":
        return f"tcp://0.0.0.0:{int(address[1])}"
    return normalize_address(address)


def _connect_address(address: str) -> str:
    return address.replace("tcp://0.0.0.0:", "tcp://127.0.0.1:")


class SyncManager(BaseManager):
    """A BaseManager with every type id of ``multiprocessing.managers.SyncManager``.

    Each creating method (``Queue()``, ``dict()``, ``Lock()``, ...) raises
    ``ProcessError`` when the manager is not started or connected, and
    ``ManagerUnavailableError`` when the manager went away.
    """


SyncManager.register("Queue", ReactorKind("Queue", _queue), QueueProxy)
SyncManager.register("JoinableQueue", ReactorKind("JoinableQueue", _queue), JoinableQueueProxy)
SyncManager.register("Event", ReactorKind("Event", _no_args), EventProxy)
SyncManager.register("Lock", ReactorKind("Lock", _no_args), LockProxy)
SyncManager.register("RLock", ReactorKind("RLock", _no_args), AcquirerProxy)
SyncManager.register("Semaphore", ReactorKind("Semaphore", _semaphore), SemaphoreProxy)
SyncManager.register("BoundedSemaphore", ReactorKind("BoundedSemaphore", _semaphore), SemaphoreProxy)
SyncManager.register("Condition", ReactorKind("Condition", _condition), ConditionProxy)
SyncManager.register("Barrier", ReactorKind("Barrier", _barrier), BarrierProxy)
SyncManager.register("Value", ReactorKind("Value", _value), ValueProxy)
SyncManager.register("Array", ReactorKind("Array", _array), ArrayProxy)
SyncManager.register("Pool", hosted.pool, PoolProxy)
SyncManager.register("list", list, ListProxy)
SyncManager.register("dict", dict, DictProxy)
SyncManager.register("Namespace", Namespace, NamespaceProxy)
SyncManager.register("Iterator", proxytype=IteratorProxy, create_method=False)
SyncManager.register("AsyncResult", create_method=False)
SyncManager.register("ActionBarrier", hosted.ActionBarrier, hosted.ActionBarrierProxy, create_method=False)
_reactor_barrier = SyncManager.Barrier  # type: ignore[attr-defined]


def _any_barrier(self: SyncManager, parties: int, action: Any = None, timeout: float | None = None) -> Any:
    """A managed Barrier: in the reactor, or with an ``action`` in the object host (where the action runs)."""
    if action is None:
        return _reactor_barrier(self, parties, None, timeout)
    token, exposed = self._create("ActionBarrier", parties, action, timeout)
    return hosted.ActionBarrierProxy(token, self._serializer, manager=self, authkey=self._authkey, exposed=exposed)


SyncManager.Barrier = _any_barrier  # type: ignore[attr-defined]
