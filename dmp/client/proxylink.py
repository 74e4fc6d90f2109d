"""A process's connections to managers, for proxy calls (internal; used by dmp.client.proxies).

    user thread --proxy.method()--> Connection.request(ObjCall)
        --> RemoteLink (one DEALER per process and manager) --> manager
    manager --ObjReply--> the waiting thread itself, serving the link (or the
        link's thread, or another waiting thread) --> Connection.on_message
    a wait interrupted (Ctrl-C, any exception) --ObjCancel(ref)--> manager:
        a parked request is dropped; a reply already on its way is undone
        here when it comes (the call's Undo: queue item back, lock released)

One Connection per (process, manager address), made on first use, so a
proxy unpickled in any process (a forked child, a cluster worker) just works.
At exit (and at a forked multiprocessing child's exit) each says Bye, so the
manager releases what the process held at once.
"""

from __future__ import annotations

import _thread
import contextlib
import itertools
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import process as _mp_process
from multiprocessing import util as _mp_util
from typing import Any

from dmp import _config, _pid
from dmp.client import doorlink, exiting, mgrkeys
from dmp.errors import AuthenticationError, ManagerUnavailableError
from dmp.wire import protocol
from dmp.wire.protocol import ObjStatus

_keys: dict[str, bytes | None] = {}  # address -> authkey, set by managers made in this process
_conns: dict[str, Connection] = {}
_conns_lock = threading.Lock()
_conns_pid = os.getpid()


def remember_key(address: str, key: bytes | None) -> None:
    _keys[address] = key


#: Addresses of the managers ``BaseManager.start()`` forks when given none.
LOCAL_MANAGER = "ipc://@dmp-manager-"


def known_keys() -> dict[str, bytes | None]:
    """The keys this process's managers were started or connected with, by address."""
    return dict(_keys)


def key_for(address: str) -> bytes | None:
    """The authkey for ``address``: one a manager made here or a proxy brought,
    else the configured one; for a manager some ancestor started without an
    address, this process's authkey (as multiprocessing's proxies use)."""
    if address in _keys:
        return _keys[address]
    key = _config.resolve(address).authkey
    if key is None and address.startswith(LOCAL_MANAGER):
        return bytes(_mp_process.current_process().authkey)
    # In a node's worker: a manager it was told nothing of may share the cluster's key.
    return key if key is not None else _config.cluster_key()


class _Slot:
    """One pending reply; the waiting thread blocks on a raw lock (cheapest wake-up)."""

    __slots__ = ("error", "frames", "lock", "msg")

    def __init__(self) -> None:
        self.lock = _thread.allocate_lock()
        self.lock.acquire()
        self.msg: protocol.ObjReply | None = None
        self.frames: list[Any] = []
        self.error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Undo:
    """How to take back a reactor call whose OK reply came after its caller gave up.

    The undoing call goes to the same object from the same thread id (lock
    ownership), carries the reply's payload (a queue item), and nobody waits
    for its answer.
    """

    method: str
    only_if_true: bool = False  # only when the reply's value is True (an acquire that got it)

    def call(self, call: protocol.ObjCall, reply: protocol.ObjReply) -> protocol.ObjCall | None:
        if reply.status != ObjStatus.OK or (self.only_if_true and reply.value is not True):
            return None
        return protocol.ObjCall(0, call.oid, self.method, [], -1.0, call.thread)


@dataclass(slots=True)
class _Abandoned:
    """A call whose caller gave up, kept until its reply can no longer come."""

    call: protocol.ObjCall
    undo: Undo
    fence: int = 0  # a ref taken after the ObjCancel went out (0: not out yet)


# Abandoned calls remembered at most (a safety net: the fence rule forgets
# them as soon as any later request is answered).
MAX_ABANDONED = 1024


class Connection:
    """This process's connection to one manager for proxy calls: requests out, replies matched by ref."""

    def __init__(self, address: str, key: bytes | None, timeout: float = _config.CONNECT_TIMEOUT_S) -> None:
        from dmp.client.link import RemoteLink

        self.address = address
        self.key = key
        self.pending: dict[int, _Slot] = {}
        self._refs = itertools.count(1)
        self.closed: BaseException | None = None
        # ref -> a call given up on whose late reply must be undone
        self.abandoned: dict[int, _Abandoned] = {}
        self._abandoned_lock = threading.Lock()
        # oid -> the object host's direct-route address, for objects this process
        # holds at the manager (granted in an ObjReply; dropped on release)
        self.direct: dict[int, str] = {}
        self.use_door = _config.direct_route()  # calls on reactor kinds through the manager's door
        self.link = RemoteLink(self, address, key, timeout)

    # called on whichever thread dispatches (the link's, or a waiting caller's)
    def on_message(self, msg: protocol.Message, frames: list[Any]) -> None:
        if isinstance(msg, protocol.ObjReply):
            slot = self.pending.pop(msg.ref, None)
            if slot is not None:
                slot.msg, slot.frames = msg, frames
                slot.lock.release()
            if self.abandoned:
                self._late_reply(msg, frames)

    def _late_reply(self, msg: protocol.ObjReply, frames: list[Any]) -> None:
        """Undo the reply to an abandoned call; forget those whose reply can no longer come.

        The manager handles one client's messages in order and its replies come
        back in order: once a request sent after an ObjCancel is answered, the
        cancelled call's reply (if the manager sent one before the cancel got
        there) has already come.
        """
        with self._abandoned_lock:
            gone = self.abandoned.pop(msg.ref, None)
            for ref in [r for r, a in self.abandoned.items() if 0 < a.fence < msg.ref]:
                del self.abandoned[ref]
        if gone is not None:
            self._undo(gone.call, gone.undo, msg, frames)

    def _undo(self, call: protocol.ObjCall, undo: Undo, reply: protocol.ObjReply, frames: list[Any]) -> None:
        """Send the call undoing ``reply`` and wait for nothing (this may be the dispatching thread)."""
        undoing = undo.call(call, reply)
        if undoing is None or self.closed is not None:
            return
        undoing.ref = next(self._refs)  # its reply matches no slot and is dropped
        try:
            self.link.post(undoing, list(frames))
        except Exception:  # the session is failing: the manager drops it all anyway
            pass

    def _abandon(self, ref: int, slot: _Slot, call: Any, undo: Undo | None) -> None:
        """The caller of request ``ref`` gives up: cancel it, or undo a reply that came. Never raises."""
        entry = None
        if undo is not None and isinstance(call, protocol.ObjCall):
            entry = _Abandoned(call, undo)
            with self._abandoned_lock:
                if len(self.abandoned) >= MAX_ABANDONED:
                    self.abandoned.pop(next(iter(self.abandoned)))
                self.abandoned[ref] = entry  # before the slot goes: a reply from now on finds it
        if self.pending.pop(ref, None) is None:
            # on_message took the reply first (it is in the slot, or going in), or fail_all did.
            with self._abandoned_lock:
                self.abandoned.pop(ref, None)
            if undo is not None and slot.lock.acquire(timeout=1.0) and slot.msg is not None:
                self._undo(call, undo, slot.msg, slot.frames)
            return
        if self.closed is not None:
            return
        try:
            self.link.post(protocol.ObjCancel(ref), [])
        except Exception:  # best effort: a failing session drops the request with us
            pass
        if entry is not None:
            entry.fence = next(self._refs)  # any ref from here on was sent after the cancel

    def abandon_elsewhere(self, call: protocol.ObjCall, undo: Undo | None) -> None:
        """A call made through the manager's door whose door connection was given up:
        cancel it through ZeroMQ, and undo its reply if that comes here instead. Never raises."""
        if undo is not None:
            with self._abandoned_lock:
                if len(self.abandoned) >= MAX_ABANDONED:
                    self.abandoned.pop(next(iter(self.abandoned)))
                entry = self.abandoned[call.ref] = _Abandoned(call, undo)
        if self.closed is not None:
            return
        try:
            self.link.post(protocol.ObjCancel(call.ref), [])
        except Exception:  # best effort: a failing session drops the request with us
            return
        if undo is not None:
            entry.fence = next(self._refs)

    def fail_all(self, exc: BaseException) -> None:
        self.closed = exc
        pending, self.pending = self.pending, {}
        for slot in pending.values():
            slot.error = exc
            slot.lock.release()

    # called by any thread
    def request(self, msg: Any, frames: Sequence[Any] = (), undo: Undo | None = None) -> tuple[protocol.ObjReply, list[Any]]:
        """Send ``msg`` (its ``ref`` is filled in) and wait for the reply.

        A wait that ends in an exception (KeyboardInterrupt, a signal handler's)
        sends ObjCancel, so a parked request takes no queue item or lock it can
        no longer hand over; a reply that crossed the cancel is undone by
        ``undo`` when it comes. The exception is raised unchanged.

        Raises:
            ManagerUnavailableError: the manager went away first.
        """
        if self.closed is not None:
            raise ManagerUnavailableError(str(self.closed))
        if self.use_door and type(msg) is protocol.ObjCall:
            msg.ref = next(self._refs)
            got = doorlink.request(self, msg, frames, undo)
            if got is not None:
                return got
        slot = _Slot()
        msg.ref = ref = next(self._refs)
        self.pending[ref] = slot
        try:
            self.link.post(msg, list(frames))
        except BaseException:  # an interruption may come after the send
            self._abandon(ref, slot, msg, undo)
            raise
        if self.closed is not None and self.pending.pop(ref, None) is not None:
            raise ManagerUnavailableError(str(self.closed))
        lock = slot.lock
        try:
            self.link.wait(lambda: not lock.locked(), lambda timeout: lock.acquire(timeout=-1 if timeout is None else timeout), None)
        except BaseException:
            self._abandon(ref, slot, msg, undo)
            raise
        if slot.error is not None:
            raise ManagerUnavailableError(str(slot.error)) from None
        assert slot.msg is not None
        return slot.msg, slot.frames

    def post(self, msg: protocol.Message) -> None:
        if self.closed is None:
            self.link.post(msg, [])

    def close(self) -> None:
        self.link.close()


def connection(address: str, key: bytes | None = None, *, timeout: float = _config.CONNECT_TIMEOUT_S) -> Connection:
    """This process's connection to ``address`` (made, or made again after a failure).

    Raises:
        ManagerUnavailableError: nobody answered within ``timeout``.
        AuthenticationError: the manager refused our key.
    """
    global _conns_pid
    conn = _conns.get(address)
    if conn is not None and conn.closed is None and _conns_pid == _pid.here:
        return conn  # the usual case, without the lock
    with _conns_lock:
        if _conns_pid != os.getpid():  # a forked child: the parent's links are not ours
            _conns.clear()
            _conns_pid = os.getpid()
        conn = _conns.get(address)
        if conn is None or conn.closed is not None:
            try:
                conn = Connection(address, key if key is not None else key_for(address), timeout)
            except AuthenticationError as exc:
                why = mgrkeys.why_refused(address)
                if why is None and key is None and address in _keys:
                    why = (f"the key used is the one a manager at {address} accepted earlier in this process "
                           "(pass authkey= to connect with another)")
                if why is None:
                    raise
                raise AuthenticationError(f"{exc}: {why}") from None
            _conns[address] = conn
        return conn


def forget(address: str) -> None:
    """Close and drop this process's connection to ``address`` (a manager shutting down)."""
    with _conns_lock:
        conn = _conns.pop(address, None)
    if conn is not None and _conns_pid == os.getpid():
        conn.close()


def close_all() -> None:
    """Say Bye on this process's connections now (a process that leaves by ``os._exit``: a node's worker)."""
    _close_all()


@exiting.after_children
def _close_all() -> None:
    # Say Bye so the manager releases our holds and locks at once, not after heartbeats.
    if _conns_pid != os.getpid():
        return
    for conn in list(_conns.values()):
        with contextlib.suppress(Exception):
            conn.close()


class _AfterFork:
    """Forked multiprocessing children leave through util._exit_function, not atexit,
    and start with an empty finalizer registry: register the Bye again in each."""

    def __call__(self, _: object = None) -> None:
        _mp_util.Finalize(None, _close_all, exitpriority=-100)


_after_fork = _AfterFork()
_mp_util.register_after_fork(_after_fork, _AfterFork.__call__)


def existing(address: str) -> Connection | None:
    """This process's live connection to ``address``, if it made one (never a parent's)."""
    conn = _conns.get(address)
    return conn if conn is not None and _conns_pid == os.getpid() else None


def remember_key_once(address: str, key: bytes) -> None:
    """A key that came with a proxy, unless this process knows one already."""
    _keys.setdefault(address, key)
