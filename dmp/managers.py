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

The manager process and ``Server`` live in dmp.client.manager_server; what a
typeid is (Registration, ReactorKind and the argument encoders) in
dmp.client.registry; both are re-exported here where they are public.
"""

from __future__ import annotations

import enum
import multiprocessing
import multiprocessing.managers
import os
import uuid
import weakref
from typing import Any

from dmp import _config, serialization
from dmp.client import hosted, mgrkeys, proxies, proxylink, registry
from dmp.client.manager_server import START_TIMEOUT_S, Server, finalize_manager, run_server
from dmp.client.proxies import (
    AutoProxy,
    BaseProxy,
    DictProxy,
    IteratorProxy,
    ListProxy,
    MakeProxyType,
    NamespaceProxy,
    PoolProxy,
    Token,
)
from dmp.client.reactor_proxies import (
    AcquirerProxy,
    ArrayProxy,
    BarrierProxy,
    ConditionProxy,
    EventProxy,
    JoinableQueueProxy,
    LockProxy,
    QueueProxy,
    SemaphoreProxy,
    ValueProxy,
)
from dmp.client.registry import HOST_BUILTINS, ReactorKind, Registration
from dmp.client.xmlserial import xml_roundtrip
from dmp.errors import ManagerUnavailableError, ProcessError
from dmp.wire import protocol, transport
from dmp.wire.address import normalize_address

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


class State(enum.Enum):
    INITIAL = 0
    STARTED = 1
    SHUTDOWN = 2


class BaseManager:
    """Serve or reach shared objects: ``start()`` a manager process, or ``connect()`` to one.

    ``address`` is a ``(host, port)`` tuple or a ZeroMQ endpoint (``tcp://host:port``,
    ``ipc://path``); ``authkey`` defaults to ``DMP_AUTHKEY``, and start() without
    either address or key makes a random key, as multiprocessing does.
    ``curve_public_key`` (connect() under CURVE): the :attr:`curve_public_key`
    of a manager another program started.
    """

    _registry: dict[str, Registration] = {}

    def __init__(self, address: Any = None, authkey: bytes | str | None = None, serializer: str = "pickle",
                 ctx: Any = None, *, shutdown_timeout: float = 1.0, curve_public_key: bytes | str | None = None) -> None:
        self._address = _bind_address(address) if address is not None else None
        self._curve_public = _curve_key(curve_public_key)
        self._authkey = _config.authkey_from(authkey)
        if serializer not in ("pickle", "xmlrpclib"):
            raise ValueError(f"unknown serializer {serializer!r}: dmp's managers take 'pickle' or 'xmlrpclib'")
        # Both travel as cloudpickle payloads on ZeroMQ; with xmlrpclib the
        # proxies pass values through xmlrpc's dumps/loads, so tuples come back
        # lists and what xmlrpc cannot marshal is refused, as in multiprocessing.
        self._serializer = serializer
        self._state = State.INITIAL
        self._process: Any = None
        self._finalizer: Any = None
        self._shutdown_timeout = shutdown_timeout

    @property
    def address(self) -> str | None:
        """Where the manager listens: a ZeroMQ endpoint string, or None before ``start()`` picked one."""
        return self._address

    @property
    def curve_public_key(self) -> str | None:
        """The CURVE public key (40 characters of Z85) this manager serves with; None without CURVE.

        Under CURVE (``DMP_CURVE``) a manager that start() forks has no cluster
        secret and serves with a key pair of its own: another process reaches it
        with ``BaseManager(address, authkey, curve_public_key=...)``.connect().
        A connected manager's is the one given, else the cluster's (``server.key``).
        """
        public = self._curve_public
        if public is None and self._state == State.STARTED and transport.curve_enabled():
            public = transport.curve_public_key()
        return public.decode() if public is not None else None

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
        if self._curve_public is not None:
            transport.remember_server_key(address, self._curve_public)
        conn = proxylink.existing(address)
        try:
            if conn is not None and self._authkey is not None and conn.key != self._authkey:
                # This process already talks to that manager with another key:
                # prove ours on a connection of its own (AuthenticationError if refused).
                proxies.Connection(address, self._authkey).close()
            else:
                proxies.connection(address, self._authkey)
        except ManagerUnavailableError as exc:
            if transport.curve_enabled() and transport.server_key_for(address) is None:
                raise ManagerUnavailableError(
                    f"{exc}. Under CURVE (DMP_CURVE) a manager that a program started (BaseManager.start(), "
                    "a started SyncManager) serves with a key pair of its own, not the cluster's server.key: pass its "
                    "public key, BaseManager(address, authkey, curve_public_key=...), which that manager's "
                    ".curve_public_key gives"
                ) from None
            raise
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
        address, key = self._address, self._authkey
        cluster = _config.resolve()
        if address is None and cluster.address is not None:
            # Its remote Processes must reach it: tcp on the interface that reaches
            # the cluster, and the cluster's key by default (dmp.client.mgrkeys).
            address = mgrkeys.bind_address(cluster.address)
            key = key if key is not None else cluster.authkey
        address = address or f"{proxylink.LOCAL_MANAGER}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        if key is None and self._address is None:
            # As multiprocessing: this process's authkey, which only it and its
            # children know, also those started before this manager.
            key = bytes(multiprocessing.current_process().authkey)
        reader, writer = _fork.Pipe(duplex=False)
        process = _fork.Process(
            target=run_server, args=(self._registry, address, key, writer, initializer, tuple(initargs)),
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
        endpoint, curve_public = value
        self._address, self._authkey, self._process = endpoint, key, process
        self._curve_public = curve_public
        if curve_public is not None:  # under CURVE it serves with a key pair of its own
            transport.remember_server_key(endpoint, curve_public)
        proxies.remember_key(endpoint, key)
        self._state = State.STARTED
        self._finalizer = weakref.finalize(
            self, finalize_manager, process, endpoint, os.getpid(), self._shutdown_timeout
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
        # The standard library's create request goes through xmlrpc too.
        if self._serializer == "xmlrpclib":
            args, kwds = tuple(xml_roundtrip(list(args))), xml_roundtrip(kwds)
        if isinstance(reg.callable, ReactorKind):
            plain, frames, info = reg.callable.encode(*args, **kwds)
            msg = protocol.ObjCreate(0, reg.callable.kind, typeid, plain)
        else:
            shipped = None if typeid in HOST_BUILTINS else reg.callable
            to_typeid = reg.method_to_typeid
            try:
                frames = serialization.dumps((shipped, args, kwds, reg.exposed, to_typeid))
            except Exception:  # the host may know the callable itself (it was forked from us)
                frames = serialization.dumps((None, args, kwds, reg.exposed, to_typeid))
            msg, info = protocol.ObjCreate(0, "host", typeid), None
        reply, out = conn.request(msg, frames)
        proxies.raise_for(reply, out)
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


def _curve_key(key: bytes | str | None) -> bytes | None:
    text = key.encode("ascii", "replace") if isinstance(key, str) else key
    if text is not None and len(text) != 40:
        raise ValueError("curve_public_key must be a CURVE public key in Z85, 40 characters (a started "
                         "manager's .curve_public_key)")
    return text


def _connect_address(address: str) -> str:
    return address.replace("tcp://0.0.0.0:", "tcp://127.0.0.1:")


class SyncManager(BaseManager):
    """A BaseManager with every type id of ``multiprocessing.managers.SyncManager``.

    Each creating method (``Queue()``, ``dict()``, ``Lock()``, ...) raises
    ``ProcessError`` when the manager is not started or connected, and
    ``ManagerUnavailableError`` when the manager went away.
    """


SyncManager.register("Queue", ReactorKind("Queue", registry.queue_args), QueueProxy)
SyncManager.register("JoinableQueue", ReactorKind("JoinableQueue", registry.queue_args), JoinableQueueProxy)
SyncManager.register("Event", ReactorKind("Event", registry.no_args), EventProxy)
SyncManager.register("Lock", ReactorKind("Lock", registry.no_args), LockProxy)
SyncManager.register("RLock", ReactorKind("RLock", registry.no_args), AcquirerProxy)
SyncManager.register("Semaphore", ReactorKind("Semaphore", registry.semaphore_args), SemaphoreProxy)
SyncManager.register("BoundedSemaphore", ReactorKind("BoundedSemaphore", registry.semaphore_args), SemaphoreProxy)
SyncManager.register("Condition", ReactorKind("Condition", registry.condition_args), ConditionProxy)
SyncManager.register("Barrier", ReactorKind("Barrier", registry.barrier_args), BarrierProxy)
SyncManager.register("Value", ReactorKind("Value", registry.value_args), ValueProxy)
SyncManager.register("Array", ReactorKind("Array", registry.array_args), ArrayProxy)
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
