"""Shared objects served by the manager reactor: the ObjectServer (a state machine, no I/O).

    client --ObjCreate/ObjCall--> ObjectServer
        reactor kind (KINDS: Queue, Lock, Event, Value, Pipe, ...; shared_data, shared_sync, pipes):
            <Kind>.call(req) --> ObjReply now, or parked with a deadline
            and answered by the call that frees it, or by tick() when it expires
        host kind (dict, list, Namespace, Pool, every registered typeid):
            --HostCall(tag)--> object host (a process beside the daemon:
            it runs user code and unpickles, the daemon never does)
            <--HostReply(tag)-- --ObjReply--> the client that asked
    client --ObjCancel(ref)--> its parked request ``ref`` is dropped unanswered
        (the caller was interrupted; parked requests are kept by (peer, ref))
    client --ObjRelease / leaves--> holders drop; an object nobody holds is freed
    client holding a Lock leaves --> the lock is released (and logged)

No host connected yet: host-bound requests wait in a backlog and the
launcher (if the reactor gave one) starts a host; a host that dies fails its
in-flight calls and loses its objects, and the next request starts another.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from dmp.wire import protocol
from dmp.wire.protocol import ObjStatus
from dmp_server import pipes, shared
from dmp_server.scheduler import Command, Send
from dmp_server.shared_data import Array, JoinableQueue, Queue, Value
from dmp_server.shared_sync import (
    Barrier,
    BoundedSemaphore,
    Condition,
    Event,
    Lock,
    RLock,
    Semaphore,
)

log = logging.getLogger("dmp.manager")

# Seconds a request waits for an object host to connect before it fails.
HOST_START_TIMEOUT_S = 30.0
# How often a launched host process is checked for having died (its socket
# tells nothing; waiting for missed heartbeats would take LIVENESS seconds).
HOST_POLL_S = 0.25

HOST = "host"

# The kinds the reactor hosts itself, by the name ObjCreate gives them.
KINDS: dict[str, type[shared.Shared]] = {
    cls.KIND: cls
    for cls in (Queue, JoinableQueue, Lock, RLock, Condition, Semaphore, BoundedSemaphore, Event, Barrier, Value, Array)
} | pipes.KINDS

# The (peer, ref) -> parked request map is swept of answered requests when it
# reaches this size, and then at twice what is left: amortised O(1) a call,
# and never more than about twice the requests really parked.
PARKED_SWEEP_MIN = 1024


class Launcher(Protocol):
    """Starts the object host process; the reactor gives one to the ObjectServer."""

    def start(self) -> None:
        """Start a host (non-blocking); it connects back and says HostReady."""
        ...

    def exitcode(self) -> int | None:
        """The launched host's exit code once it ended; None while it runs or before start."""
        ...

    def stop(self) -> None: ...


@dataclass(slots=True, eq=False)
class Entry:
    oid: int
    typeid: str
    obj: shared.Shared | None  # None: lives in the object host
    holders: set[str] = field(default_factory=set)
    lost: str = ""  # why calls on it fail (its host died)


@dataclass(slots=True)
class _HostCall:
    peer: str
    ref: int


class ObjectServer:
    """Objects by id, who holds them, parked requests by deadline, and the host's traffic."""

    def __init__(self, launcher: Launcher | None = None) -> None:
        self.entries: dict[int, Entry] = {}
        self.held: dict[str, set[int]] = {}  # peer -> oids it holds (the live peers)
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._heap: list[tuple[float, int, int, shared.Request]] = []  # deadline, seq, oid, req
        self.parked: dict[tuple[str, int], tuple[int, shared.Request]] = {}  # (peer, ref) -> (oid, req)
        self._sweep_at = PARKED_SWEEP_MIN
        self.launcher = launcher
        self.host: str | None = None
        self._launched_at: float | None = None  # a launch is under way (or running)
        self.backlog: list[tuple[str, protocol.Message, list[Any], float]] = []
        self.inflight: dict[int, _HostCall] = {}
        self._next_poll = 0.0

    # --- events -------------------------------------------------------------------

    def handle(self, peer: str, msg: protocol.Message, frames: list[Any], now: float) -> list[Command]:
        """A shared-object message from ``peer``. Never raises: a bad request is answered."""
        self.held.setdefault(peer, set())
        try:
            if isinstance(msg, protocol.ObjCall):
                return self._call(peer, msg, frames, now)
            if isinstance(msg, protocol.ObjCreate):
                return self._create(peer, msg, frames, now)
            if isinstance(msg, protocol.ObjRelease):
                return self._release(peer, msg.oids)
            if isinstance(msg, protocol.ObjCancel):
                return self._cancel(peer, msg.ref)
            if isinstance(msg, protocol.HostReply):
                return self._host_reply(peer, msg, frames)
            if isinstance(msg, protocol.HostReady):
                return self._host_ready(peer, now)
        except shared.Refusal as refusal:
            ref = getattr(msg, "ref", 0)
            return [Send(peer, protocol.ObjReply(ref, ObjStatus.FAILED, [refusal.name, refusal.text]))]
        except Exception as exc:  # one bad request must never stop the reactor
            log.warning("bad %s from %s: %r", type(msg).__name__, peer, exc)
            ref = getattr(msg, "ref", 0)
            return [Send(peer, protocol.ObjReply(ref, ObjStatus.FAILED, ["TypeError", f"malformed request: {exc}"]))]
        return [Send(peer, protocol.Error(protocol.ErrorCode.BAD_MESSAGE, f"unexpected {type(msg).__name__}"))]

    def tick(self, now: float) -> list[Command]:
        """Expire parked requests whose deadline passed; notice a dead host."""
        out = shared.Out()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, oid, req = heapq.heappop(heap)
            entry = self.entries.get(oid)
            if not req.done and entry is not None and entry.obj is not None:
                entry.obj.expire(req, out)
            if req.done:
                self.parked.pop((req.peer, req.ref), None)
        cmds = out.commands
        if self._launched_at is not None and now >= self._next_poll:
            self._next_poll = now + HOST_POLL_S
            code = self.launcher.exitcode() if self.launcher is not None else None
            if code is not None:
                cmds += self._host_gone(f"the object host process exited with code {code}")
            elif self.host is None and now - self._launched_at > HOST_START_TIMEOUT_S:
                cmds += self._host_gone(f"no object host connected within {HOST_START_TIMEOUT_S:g} s")
        return cmds

    def next_deadline(self) -> float | None:
        """The earliest moment tick() has work (monotonic seconds), if any."""
        heap = self._heap
        while heap and heap[0][3].done:
            heapq.heappop(heap)
        first = heap[0][0] if heap else None
        if self._launched_at is not None and (first is None or self._next_poll < first):
            first = self._next_poll
        return first

    def peer_gone(self, peer: str, *, crashed: bool = True) -> list[Command]:
        """``peer`` left (said Bye) or died (``crashed``): release its holds, and
        after a crash the locks it held."""
        cmds: list[Command] = []
        if peer == self.host:
            cmds += self._host_gone("the object host disconnected")
        oids = self.held.pop(peer, set())
        for key in [key for key in self.parked if key[0] == peer]:
            del self.parked[key]
        out = shared.Out(crashed=crashed)
        for oid in sorted(oids):
            entry = self.entries.get(oid)
            if entry is not None and entry.obj is not None:
                entry.obj.peer_gone(peer, out)
        for note in out.notes:
            log.warning("%s", note)
        cmds += out.commands
        cmds += self._unhold(peer, oids)
        return cmds

    # --- reactor kinds and routing ------------------------------------------------------

    def _create(self, peer: str, msg: protocol.ObjCreate, frames: list[Any], now: float) -> list[Command]:
        if msg.kind == HOST:
            if not msg.typeid:
                raise shared.Refusal("TypeError", "a host object needs a typeid")
            return self._to_host(peer, msg.ref, protocol.HostCall(0, 0, "__create__", msg.typeid), frames, now)
        cls = KINDS.get(msg.kind)
        if cls is None:
            raise shared.Refusal("TypeError", f"unknown shared object kind {msg.kind!r}")
        if not isinstance(msg.args, list):
            raise shared.Refusal("TypeError", "constructor arguments must be a list")
        oid = next(self._ids)
        obj = cls(msg.args, frames)
        obj.created(peer)
        self.entries[oid] = Entry(oid, msg.typeid or msg.kind, obj)
        self.hold(peer, oid)
        return [Send(peer, protocol.ObjReply(msg.ref, ObjStatus.OK, None, oid))]

    def _call(self, peer: str, msg: protocol.ObjCall, frames: list[Any], now: float) -> list[Command]:
        entry = self.entries.get(msg.oid) if type(msg.oid) is int else None
        if entry is None:
            raise shared.Refusal("ReferenceError", f"no shared object {msg.oid!r}: it was released, or its holders left")
        if entry.lost:
            raise shared.Refusal("ReferenceError", entry.lost)
        if not isinstance(msg.method, str) or not isinstance(msg.args, list):
            raise shared.Refusal("TypeError", "malformed call")
        if not isinstance(msg.timeout, (int, float)) or not isinstance(msg.thread, int):
            raise shared.Refusal("TypeError", "malformed timeout or thread")
        self.hold(peer, entry.oid)
        if entry.obj is None:
            return self._to_host(peer, msg.ref, protocol.HostCall(0, entry.oid, msg.method), frames, now)
        return self.run(entry, entry.obj, shared.Request(peer, msg.ref, msg.thread, msg.method, msg.args, frames, float(msg.timeout)), now)

    def run(self, entry: Entry, obj: shared.Shared, req: shared.Request, now: float) -> list[Command]:
        """Call reactor-kind ``obj`` and keep what the call parked; the replies to send."""
        out = shared.Out()
        obj.call(req, out)
        if not out.parked and not out.notes and not obj.TRACKS_HOLDERS:
            return out.commands  # the usual call: answered now, nothing else to do
        for parked, timeout in out.parked:
            if timeout >= 0:
                heapq.heappush(self._heap, (now + timeout, next(self._seq), entry.oid, parked))
            self._remember(entry.oid, parked)
        for note in out.notes:
            log.warning("%s", note)
        if obj.TRACKS_HOLDERS:
            for holder in [p for p in entry.holders if not obj.holds(p)]:
                self.held.get(holder, set()).discard(entry.oid)
                out.commands += self._unhold(holder, {entry.oid})
        return out.commands

    def _remember(self, oid: int, req: shared.Request) -> None:
        """Keep a parked request findable by (peer, ref) for ObjCancel."""
        parked = self.parked
        parked[(req.peer, req.ref)] = (oid, req)
        if len(parked) >= self._sweep_at:
            self.parked = parked = {key: item for key, item in parked.items() if not item[1].done}
            self._sweep_at = max(PARKED_SWEEP_MIN, 2 * len(parked))

    def _cancel(self, peer: str, ref: Any) -> list[Command]:
        """ObjCancel: drop ``peer``'s parked request ``ref`` unanswered. Anything else is ignored:
        a reply already sent is the client's to undo, and a cancel never answers."""
        if type(ref) is not int:
            log.debug("ignored ObjCancel with a malformed ref %r from %s", ref, peer)
            return []
        found = self.parked.pop((peer, ref), None)
        if found is None:
            return []
        oid, req = found
        entry = self.entries.get(oid)
        if req.done or entry is None or entry.obj is None:
            return []
        req.done = True  # every kind skips done requests wherever they still sit
        out = shared.Out()
        entry.obj.cancel(req, out)
        return out.commands

    def hold(self, peer: str, oid: int) -> None:
        entry = self.entries[oid]
        if peer not in entry.holders:
            entry.holders.add(peer)
            self.held.setdefault(peer, set()).add(oid)

    def _release(self, peer: str, oids: list[Any]) -> list[Command]:
        if not isinstance(oids, list):
            raise shared.Refusal("TypeError", "oids must be a list")
        mine = self.held.get(peer, set())
        gone = {oid for oid in oids if type(oid) is int and oid in mine}
        mine -= gone
        return self._unhold(peer, gone)

    def _unhold(self, peer: str, oids: set[int]) -> list[Command]:
        drop = []
        for oid in oids:
            entry = self.entries.get(oid)
            if entry is None:
                continue
            entry.holders.discard(peer)
            if not entry.holders:
                del self.entries[oid]
                if entry.obj is None and not entry.lost:
                    drop.append(oid)
        if drop and self.host is not None:
            return [Send(self.host, protocol.HostDrop(sorted(drop)))]
        return []

    # --- the object host ------------------------------------------------------------------

    def _to_host(
        self, peer: str, ref: int, call: protocol.HostCall, frames: list[Any], now: float
    ) -> list[Command]:
        tag = next(self._ids)
        call.tag = tag
        self.inflight[tag] = _HostCall(peer, ref)
        if self.host is not None:
            return [Send(self.host, call, frames)]
        if self.launcher is None:
            del self.inflight[tag]
            raise shared.Refusal("RuntimeError", "this manager has no object host for dict, list, Namespace and registered types")
        self.backlog.append((peer, call, frames, now))
        if self._launched_at is None:
            log.info("starting the object host")
            self._launched_at = now
            self._next_poll = now + HOST_POLL_S
            self.launcher.start()
        return []

    def _host_ready(self, peer: str, now: float) -> list[Command]:
        if self.host is not None and self.host != peer:
            return [Send(peer, protocol.Error(protocol.ErrorCode.REFUSED, "another object host is connected"))]
        self.host = peer
        if self._launched_at is None:
            self._launched_at = now  # a host the launcher did not start: still watch it
        log.info("object host %s ready", peer)
        backlog, self.backlog = self.backlog, []
        return [Send(peer, call, frames) for _, call, frames, _ in backlog]

    def _host_reply(self, peer: str, msg: protocol.HostReply, frames: list[Any]) -> list[Command]:
        if peer != self.host:
            return [Send(peer, protocol.Error(protocol.ErrorCode.BAD_MESSAGE, "only the object host sends HostReply"))]
        pending = self.inflight.pop(msg.tag, None) if type(msg.tag) is int else None
        if pending is None:
            return []
        if isinstance(msg.retain, list):
            for oid in msg.retain:
                if type(oid) is int and oid in self.entries:
                    self.hold(peer, oid)
        oid = 0
        cmds: list[Command] = []
        if msg.made and msg.status == ObjStatus.OK:
            if pending.peer in self.held:
                oid = msg.tag
                self.entries[oid] = Entry(oid, str(msg.made), None)
                self.hold(pending.peer, oid)
            else:  # the asker left meanwhile: nobody holds the new object
                cmds.append(Send(peer, protocol.HostDrop([msg.tag])))
        direct = msg.direct if type(msg.direct) is str and msg.status == ObjStatus.OK else ""
        cmds.append(Send(pending.peer, protocol.ObjReply(pending.ref, msg.status, msg.value, oid, direct), frames))
        return cmds

    def _host_gone(self, why: str) -> list[Command]:
        if self.host is not None or self.backlog or self.inflight:
            log.warning("object host lost: %s", why)
        self.host = None
        self._launched_at = None
        cmds: list[Command] = []
        text = f"{why}; objects it held are lost"
        for _tag, pending in self.inflight.items():
            cmds.append(Send(pending.peer, protocol.ObjReply(pending.ref, ObjStatus.FAILED, ["ReferenceError", text])))
        self.inflight.clear()
        self.backlog.clear()
        for entry in self.entries.values():
            if entry.obj is None:
                entry.lost = text
        if self.launcher is not None:
            self.launcher.stop()
        return cmds


# Message types the reactor routes here.
MESSAGES: tuple[type[protocol.Message], ...] = (
    protocol.ObjCreate,
    protocol.ObjCall,
    protocol.ObjRelease,
    protocol.ObjCancel,
    protocol.HostReady,
    protocol.HostReply,
)
