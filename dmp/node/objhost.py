"""The object host: the process beside the manager that runs dict, list, Namespace,
Pool and every ``BaseManager.register``-ed type (internal).

    manager --HostCall(tag, oid, method)--> host I/O thread
        dict / list / Namespace: run inline (microseconds, never block)
        anything else: a worker thread (user code may block; others go on)
    host --HostReply(tag, status, value, made, retain)--> manager --> client

The daemon never unpickles; this process does, and only what the manager
forwarded from authenticated peers. It beats as the manager's Welcome says
(dmp.wire.peer) and exits when the manager says Bye, goes silent, or its lifeline fd (a pipe from whoever started it) reaches EOF.
Started two ways: ``python -m dmp.node.hostmain ENDPOINT PUBLIC`` by the daemon (key on
stdin, stdin is the lifeline), or forked by :class:`ForkLauncher` from a
``BaseManager.start()`` / ``serve_forever()`` process, so it sees the user's
registered callables and globals.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import socket
import sys
import threading
import time
from multiprocessing.managers import RemoteError
from typing import Any

from dmp import _config, serialization
from dmp.client import proxies
from dmp.client.turns import Wakeup
from dmp.node.directhost import DirectServer
from dmp.wire import protocol, transport
from dmp.wire.peer import PeerLoop, Tick
from dmp.wire.protocol import ObjStatus

# Worker threads for calls that may block (registered types, Pool): as many
# blocking calls as this can be in progress at once, as with the standard
# library's thread per connection, but bounded.
MAX_THREADS = 64
INLINE_TYPES = frozenset({"dict", "list", "Namespace"})


def public_methods(obj: Any) -> list[str]:
    return [name for name in dir(obj) if name[0] != "_" and callable(getattr(obj, name, None))]


class Host:
    def __init__(
        self, endpoint: str, key: bytes | None, registry: dict[str, Any], lifeline: int | None, public: str = ""
    ) -> None:
        self.endpoint = endpoint
        self.key = key
        self.registry = registry
        self.lifeline = lifeline
        self.objs: dict[int, tuple[Any, frozenset[str], dict[str, str], bool]] = {}
        self.outbox: collections.deque[tuple[protocol.Message, list[Any]]] = collections.deque()
        self._wake = Wakeup(self)
        self.pool = concurrent.futures.ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="dmp-host")
        # Held while an inline kind runs: the I/O thread's HostCalls and the
        # direct route's connection threads take turns on those objects.
        self.inline_lock = threading.Lock()
        self.direct: DirectServer | None = None
        if _config.direct_route():
            try:
                self.direct = DirectServer(key, self.call_direct)
            except OSError:  # no abstract unix sockets here: every call goes through the manager
                self.direct = None
        proxies.remember_key(endpoint, key)
        if public:
            proxies.remember_key(public, key)  # proxies inside host objects name the daemon so

    def run(self) -> None:
        pid = os.getpid()
        hello = protocol.Hello(protocol.Role.CLIENT, "objhost", socket.gethostname(), pid)
        # Never a second Hello: a manager that forgot us has forgotten our objects too.
        peer = PeerLoop(self.endpoint, self.key, hello, rehello=False)
        peer.say_hello()
        peer.send(protocol.HostReady(pid))
        peer.watch(self._wake.fd)
        if self.lifeline is not None:
            peer.watch(self.lifeline)
        if self.direct is not None:
            peer.watch(self.direct.fd)
        paused_at = 0.0  # when the direct listener was last set aside (out of fds); 0: it is polled
        try:
            while True:
                while self.outbox:
                    msg, frames = self.outbox.popleft()
                    peer.send(msg, frames)
                ready = peer.poll()
                if self.lifeline is not None and self.lifeline in ready:
                    if not os.read(self.lifeline, 4096):
                        return  # whoever started us is gone
                if self._wake.fd in ready:
                    self._wake.clear()
                if self.direct is not None:
                    paused_at = self._direct_accepts(peer, ready, paused_at)
                for msg, frames in peer.messages():
                    if isinstance(msg, protocol.HostCall):
                        self.receive(msg, frames)
                    elif isinstance(msg, protocol.HostDrop):
                        for oid in msg.oids:
                            self.objs.pop(oid, None)
                    elif isinstance(msg, protocol.Bye):
                        return
                    elif isinstance(msg, protocol.Error) and msg.code in (protocol.ErrorCode.AUTH, protocol.ErrorCode.REFUSED):
                        print(f"dmp object host: the manager refused us: {msg.text}", file=sys.stderr)
                        return
                    elif isinstance(msg, protocol.Error) and msg.code == protocol.ErrorCode.UNKNOWN_PEER:
                        return  # the manager restarted: our objects are gone with it
                if peer.tick() is Tick.SILENT:
                    return  # the manager went silent (for as many beats as it gives us)
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
            if self.direct is not None:
                self.direct.close()
            peer.close()

    def _direct_accepts(self, peer: PeerLoop, ready: set[int], paused_at: float) -> float:
        """Accept direct-route connections; out of fds, stop polling the listener for a second."""
        assert self.direct is not None
        if paused_at and time.monotonic() - paused_at >= 1.0:
            peer.watch(self.direct.fd)
            paused_at = 0.0
        if not paused_at and self.direct.fd in ready and not self.direct.accept():
            peer.poller.unregister(self.direct.fd)
            paused_at = time.monotonic()
        return paused_at

    def receive(self, msg: protocol.HostCall, frames: list[Any]) -> None:
        entry = self.objs.get(msg.oid)
        inline = msg.typeid in INLINE_TYPES if msg.method == "__create__" else entry is not None and entry[3]
        if inline:
            with self.inline_lock:
                self.outbox.append(self.execute(msg, frames))
        else:
            frames = [bytes(f) for f in frames]  # zmq may reuse the buffers
            self.pool.submit(self._threaded, msg, frames)

    def _threaded(self, msg: protocol.HostCall, frames: list[Any]) -> None:
        self.outbox.append(self.execute(msg, frames))
        self._wake.poke()

    def execute(self, msg: protocol.HostCall, frames: list[Any]) -> tuple[protocol.Message, list[Any]]:
        """Run one call; every outcome, even a failure to pickle it, becomes a HostReply."""
        retain: list[int] = []
        try:
            with proxies.collecting(retain):
                if msg.method == "__create__":
                    return self._create(msg, frames, retain)
                entry = self.objs.get(msg.oid)
                if entry is None:
                    raise ReferenceError(f"the object host holds no object {msg.oid}")
                args, kwds = serialization.loads(frames)
                result = self._invoke(entry, msg.method, args, kwds)
            typeid = entry[2].get(msg.method)
            if typeid:
                return self._made(msg.tag, typeid, result, None, None, retain)
            reply = protocol.HostReply(msg.tag, ObjStatus.OK, None, "", retain, self._direct_for(entry))
            return reply, serialization.dumps(result)
        except BaseException as exc:
            return protocol.HostReply(msg.tag, ObjStatus.RAISED, None, "", retain), serialization.dump_exception(exc)

    def call_direct(self, oid: Any, method: Any, frames: list[Any]) -> tuple[ObjStatus, list[Any]]:
        """A call that came by the direct route: run it if the manager would only have passed it
        through (an inline kind, no object made, no proxy kept), else answer REDIRECT unrun."""
        entry = self.objs.get(oid) if type(oid) is int else None
        if entry is None or not entry[3] or type(method) is not str or method in entry[2]:
            return ObjStatus.REDIRECT, []
        retain: list[int] = []
        state = proxies._state
        try:
            state.retain = retain  # as proxies.collecting, without its two calls
            try:
                args, kwds = serialization.loads(frames)
            finally:
                state.retain = None
            if retain:  # the object would keep a proxy: the manager must record that hold
                return ObjStatus.REDIRECT, []
            with self.inline_lock:  # pickled under it too: another thread may change what it holds
                if method in entry[1] and method[0] != "#":  # _invoke's usual case, inline
                    result = getattr(entry[0], method)(*args, **kwds)
                else:
                    result = self._invoke(entry, method, args, kwds)
                out = serialization.dumps_quick(result)
            return ObjStatus.OK, out
        except BaseException as exc:
            return ObjStatus.RAISED, serialization.dump_exception(exc)

    @staticmethod
    def _invoke(entry: tuple[Any, frozenset[str], dict[str, str], bool], method: str, args: Any, kwds: Any) -> Any:
        obj, exposed, _, _ = entry
        if method == "#GETVALUE":
            return obj
        if method in ("__repr__", "__str__") and method not in exposed:
            return repr(obj) if method == "__repr__" else str(obj)  # multiprocessing's fallback
        if method not in exposed:
            # As multiprocessing's server: a RemoteError carrying the explanation.
            raise RemoteError(
                f"AttributeError: method {method!r} of {type(obj)!r} object is not in exposed={sorted(exposed)!r}"
            )
        return getattr(obj, method)(*args, **kwds)

    def _direct_for(self, entry: tuple[Any, frozenset[str], dict[str, str], bool]) -> str:
        """Where this object may be called directly ("" for none)."""
        return self.direct.address if self.direct is not None and entry[3] else ""

    def _create(self, msg: protocol.HostCall, frames: list[Any], retain: list[int]) -> tuple[protocol.Message, list[Any]]:
        shipped, args, kwds, exposed, to_typeid = serialization.loads(frames)
        reg = self.registry.get(msg.typeid)
        if reg is not None and reg.callable is not None:
            func, exposed, to_typeid = reg.callable, reg.exposed or exposed, reg.method_to_typeid or to_typeid
        elif shipped is not None:
            func = shipped
        else:
            raise KeyError(f"typeid {msg.typeid!r} is not registered with a callable on the manager's side")
        return self._made(msg.tag, msg.typeid, func(*args, **kwds), exposed, to_typeid, retain)

    def _made(
        self, tag: int, typeid: str, obj: Any, exposed: Any, to_typeid: Any, retain: list[int]
    ) -> tuple[protocol.Message, list[Any]]:
        reg = self.registry.get(typeid)
        if exposed is None and reg is not None:
            exposed, to_typeid = reg.exposed, reg.method_to_typeid
        names = list(exposed) if exposed is not None else public_methods(obj)
        entry = self.objs[tag] = (obj, frozenset(names), dict(to_typeid or {}), typeid in INLINE_TYPES)
        return protocol.HostReply(tag, ObjStatus.OK, [typeid, names], typeid, retain, self._direct_for(entry)), []


def serve(endpoint: str, key: bytes | None, registry: dict[str, Any], lifeline: int | None, public: str = "") -> None:
    Host(endpoint, key, registry, lifeline, public).run()


class ForkLauncher:
    """Forks the host from this process (it inherits the registry and globals).

    A pipe is the host's lifeline: this side holds the write end, so the host
    sees EOF and exits when this process ends, however it ends.
    """

    def __init__(self, endpoint: str, key: bytes | None, registry: dict[str, Any], public: str = "") -> None:
        self.endpoint = endpoint
        self.public = public
        self.key = key
        self.registry = registry
        self.proc: Any = None
        self._lifeline = -1

    def start(self) -> None:
        import multiprocessing

        self.stop()
        r, w = os.pipe()
        proc = multiprocessing.get_context("fork").Process(
            target=_forked_host, args=(self.endpoint, self.key, self.registry, r, w, self.public), name="dmp-objhost", daemon=True
        )
        proc.start()
        os.close(r)
        self.proc, self._lifeline = proc, w

    def exitcode(self) -> int | None:
        return None if self.proc is None else self.proc.exitcode

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1
        if proc is not None:
            proc.join(2.0)
            if proc.exitcode is None:
                proc.kill()
                proc.join(2.0)


def _forked_host(endpoint: str, key: bytes | None, registry: dict[str, Any], r: int, w: int, public: str) -> None:
    os.close(w)
    transport.forget_context_after_fork()
    serve(endpoint, key, registry, r, public)
