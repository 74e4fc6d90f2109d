"""The shared objects the manager hosts itself: state machines over opaque bytes.

    ObjectServer --call(req, out)--> Queue | JoinableQueue | Lock | RLock |
        Semaphore | BoundedSemaphore | Event | Condition | Barrier | Value | Array
    each call answers now (out.ok / out.fail), or parks the request
    (out.park: it waits, with its deadline) until a later call wakes it;
    a deadline that passes is expire(req); a departed peer is peer_gone(peer);
    an interrupted caller's parked request is marked done, then cancel(req)

No I/O, no clock, no pickles: an item is a list of payload frames passed
through untouched; a Value is its pickled bytes; an Array is raw machine
items (``array.array`` layout) cut by index arithmetic.
"""

from __future__ import annotations

import array
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dmp.wire import protocol
from dmp.wire.protocol import ObjStatus
from dmp_server.scheduler import Command, Send

Owner = tuple[str, int]  # (peer, thread)


class Refusal(Exception):
    """A request the object refuses; becomes ObjReply(FAILED, [name, text])."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name
        self.text = text


@dataclass(slots=True, eq=False)
class Request:
    """One call on an object; lives on while it is parked."""

    peer: str
    ref: int
    thread: int
    method: str
    args: list[Any]
    frames: list[Any]
    timeout: float = -1.0  # -1: wait forever; 0: do not wait
    done: bool = False  # answered (or its peer left): skip it wherever it still sits
    stage: int = 0  # Condition.wait: 0 waiting for notify, 1 notified, 2 timed out
    saved: int = 0  # Condition.wait: the recursion count to restore

    @property
    def owner(self) -> Owner:
        return (self.peer, self.thread)

    @property
    def blocking(self) -> bool:
        return self.timeout != 0


@dataclass(slots=True)
class Out:
    """What one event produced: replies to send and requests to park."""

    commands: list[Command] = field(default_factory=list)
    parked: list[tuple[Request, float]] = field(default_factory=list)  # (request, timeout)
    notes: list[str] = field(default_factory=list)  # log lines for the reactor
    # peer_gone: the peer vanished (killed, silent) rather than saying Bye.
    crashed: bool = True

    def ok(self, req: Request, value: Any = None, frames: list[Any] | None = None) -> None:
        req.done = True
        self.commands.append(Send(req.peer, protocol.ObjReply(req.ref, ObjStatus.OK, value), frames or []))

    def fail(self, req: Request, name: str, text: str) -> None:
        req.done = True
        msg = protocol.ObjReply(req.ref, ObjStatus.FAILED, [name, text])
        self.commands.append(Send(req.peer, msg))

    def park(self, req: Request, timeout: float | None = None) -> None:
        self.parked.append((req, req.timeout if timeout is None else timeout))


def _arg(args: list[Any], i: int, default: Any, kind: type | tuple[type, ...]) -> Any:
    value = args[i] if len(args) > i else default
    if value is not default and (not isinstance(value, kind) or (isinstance(value, bool) and kind is int)):
        raise Refusal("TypeError", f"argument {i + 1} must be {getattr(kind, '__name__', kind)}, not {type(value).__name__}")
    return value


def _live(reqs: Iterable[Request]) -> list[Request]:
    return [r for r in reqs if not r.done]


def _abandon(requests: Iterable[Request], peer: str) -> None:
    """Parked requests of a peer that left: nobody waits for them any more."""
    for req in requests:
        if req.peer == peer:
            req.done = True


class Shared:
    """Base of the reactor kinds."""

    KIND: ClassVar[str] = ""

    def __init__(self, args: list[Any], frames: list[Any]) -> None:
        pass

    def call(self, req: Request, out: Out) -> None:
        if req.method in ("__repr__", "__str__"):  # what str(proxy) shows, as multiprocessing's fallback
            out.ok(req, self.describe())
            return
        handler = getattr(self, "do_" + req.method, None)
        if handler is None:
            raise Refusal("AttributeError", f"{self.KIND} has no method {req.method!r}")
        handler(req, out)

    def describe(self) -> str:
        return f"<managed {self.KIND} object>"

    def expire(self, req: Request, out: Out) -> None:
        """``req``'s deadline passed while it was parked."""

    def peer_gone(self, peer: str, out: Out) -> None:
        """``peer`` left: forget its parked requests, give back what it held."""

    def cancel(self, req: Request, out: Out) -> None:
        """Parked ``req`` was cancelled (already marked done, never answered).

        Most kinds need nothing more: they skip done requests wherever they sit.
        """


# --- queues ---------------------------------------------------------------------------


class Queue(Shared):
    KIND = "Queue"

    def __init__(self, args: list[Any], frames: list[Any]) -> None:
        self.maxsize: int = _arg(args, 0, 0, int)
        self.items: deque[list[Any]] = deque()
        self.getters: deque[Request] = deque()
        self.putters: deque[Request] = deque()

    def _full(self) -> bool:
        return 0 < self.maxsize <= len(self.items)

    def _accept(self, frames: list[Any]) -> None:
        self.items.append(frames)

    def do_put(self, req: Request, out: Out) -> None:
        if not self._full():
            self._accept(req.frames)
            out.ok(req)
            self._settle(out)
        elif req.blocking:
            self.putters.append(req)
            out.park(req)
        else:
            out.fail(req, "Full", "")

    def do_get(self, req: Request, out: Out) -> None:
        if self.items:
            out.ok(req, frames=self.items.popleft())
            self._settle(out)
        elif req.blocking:
            self.getters.append(req)
            out.park(req)
        else:
            out.fail(req, "Empty", "")

    def do_unget(self, req: Request, out: Out) -> None:
        """Give back an item a get took but its interrupted caller never received.

        It goes back first in line, even past ``maxsize`` (it was in the queue a
        moment ago), and, in a JoinableQueue, is not counted again.
        """
        self.items.appendleft(req.frames)
        out.ok(req)
        self._settle(out)

    def _settle(self, out: Out) -> None:
        """Hand items to parked getters and room to parked putters until neither can move."""
        moved = True
        while moved:
            moved = False
            while self.items and self.getters:
                getter = self.getters.popleft()
                if not getter.done:
                    out.ok(getter, frames=self.items.popleft())
                    moved = True
            while self.putters and not self._full():
                putter = self.putters.popleft()
                if not putter.done:
                    self._accept(putter.frames)
                    out.ok(putter)
                    moved = True

    def do_qsize(self, req: Request, out: Out) -> None:
        out.ok(req, len(self.items))

    def do_empty(self, req: Request, out: Out) -> None:
        out.ok(req, not self.items)

    def do_full(self, req: Request, out: Out) -> None:
        out.ok(req, self._full())

    def expire(self, req: Request, out: Out) -> None:
        out.fail(req, "Empty" if req.method == "get" else "Full", "")

    def peer_gone(self, peer: str, out: Out) -> None:
        _abandon((*self.getters, *self.putters), peer)


class JoinableQueue(Queue):
    KIND = "JoinableQueue"

    def __init__(self, args: list[Any], frames: list[Any]) -> None:
        super().__init__(args, frames)
        self.unfinished = 0
        self.joiners: list[Request] = []

    def _accept(self, frames: list[Any]) -> None:
        super()._accept(frames)
        self.unfinished += 1

    def do_task_done(self, req: Request, out: Out) -> None:
        if self.unfinished <= 0:
            raise Refusal("ValueError", "task_done() called too many times")
        self.unfinished -= 1
        out.ok(req)
        if self.unfinished == 0:
            for joiner in _live(self.joiners):
                out.ok(joiner)
            self.joiners = []

    def do_join(self, req: Request, out: Out) -> None:
        if self.unfinished == 0:
            out.ok(req)
        else:
            self.joiners.append(req)
            out.park(req, -1.0)

    def peer_gone(self, peer: str, out: Out) -> None:
        super().peer_gone(peer, out)
        _abandon(self.joiners, peer)


# --- locks ---------------------------------------------------------------------------


class _Waiting(Shared):
    """An object whose blocking calls park in ``waiters`` and answer False on timeout."""

    waiters: Any

    def expire(self, req: Request, out: Out) -> None:
        out.ok(req, False)

    def peer_gone(self, peer: str, out: Out) -> None:
        _abandon(self.waiters, peer)

    def _park_or_refuse(self, req: Request, out: Out) -> None:
        """Not now: park a blocking request until woken or expired; answer False otherwise."""
        if req.blocking:
            self.waiters.append(req)
            out.park(req)
        else:
            out.ok(req, False)


class Lock(_Waiting):
    """A lock held by one (peer, thread); any thread may release it, as threading.Lock."""

    KIND = "Lock"
    OWNED: ClassVar[bool] = False  # only the holder may release it

    def __init__(self, args: list[Any], frames: list[Any]) -> None:
        self.owner: Owner | None = None
        self.count = 0
        self.waiters: deque[Request] = deque()

    def _mine(self, req: Request) -> bool:
        return False  # a plain Lock does not recurse

    def do_acquire(self, req: Request, out: Out) -> None:
        if self.owner is None:
            self.owner, self.count = req.owner, 1
            out.ok(req, True)
        elif self._mine(req):
            self.count += 1
            out.ok(req, True)
        else:
            self._park_or_refuse(req, out)

    def do_release(self, req: Request, out: Out) -> None:
        self._release(req)
        out.ok(req)
        self._grant(out)

    def _release(self, req: Request) -> None:
        if self.owner is None:
            raise Refusal("RuntimeError", "release unlocked lock")
        self.count -= 1
        if self.count <= 0:
            self.owner, self.count = None, 0

    def describe(self) -> str:
        return f"<managed {self.KIND} object, {'locked' if self.owner is not None else 'unlocked'}>"

    def do_locked(self, req: Request, out: Out) -> None:
        out.ok(req, self.owner is not None)

    def _grant(self, out: Out) -> None:
        while self.owner is None and self.waiters:
            req = self.waiters.popleft()
            if req.done:
                continue
            self.owner = req.owner
            if req.method == "wait":  # Condition.wait taking its lock back
                self.count = req.saved
                out.ok(req, req.stage == 1)
            else:
                self.count = 1
                out.ok(req, True)

    def peer_gone(self, peer: str, out: Out) -> None:
        super().peer_gone(peer, out)
        # The standard library never releases a lock whose holder exits, and
        # code relies on it: any process may release a plain Lock (a child
        # takes it, the parent releases it), so a plain Lock stays held. Only
        # an owned lock (RLock, Condition), which nobody else may release, is
        # freed, and only when its holder crashed (no Bye): else it would be
        # held forever.
        if not self.OWNED:
            return
        if self.owner is not None and self.owner[0] == peer and out.crashed:
            out.notes.append(f"{self.KIND} held by departed client {peer} (thread {self.owner[1]}) released")
            self.owner, self.count = None, 0
            self._grant(out)


class RLock(Lock):
    """Recursive: the owning (peer, thread) may acquire again; only it may release."""

    KIND = "RLock"
    OWNED = True

    def _mine(self, req: Request) -> bool:
        return self.owner == req.owner

    def _release(self, req: Request) -> None:
        if self.owner != req.owner:
            raise Refusal("RuntimeError", "cannot release un-acquired lock")
        super()._release(req)


class Condition(RLock):
    """An RLock with waiters: wait() gives the lock up and takes it back when woken."""

    KIND = "Condition"

    def __init__(self, args: list[Any], frames: list[Any]) -> None:
        super().__init__(args, frames)
        self.sleepers: deque[Request] = deque()

    def do_wait(self, req: Request, out: Out) -> None:
        if self.owner != req.owner:
            raise Refusal("RuntimeError", "cannot wait on un-acquired lock")
        req.saved, self.owner, self.count = self.count, None, 0
        if req.blocking:
            self.sleepers.append(req)
            out.park(req)
        else:
            req.stage = 2
            self.waiters.append(req)
        self._grant(out)

    def do_notify(self, req: Request, out: Out) -> None:
        n = _arg(req.args, 0, 1, int)
        self._notify(req, n, out)

    def do_notify_all(self, req: Request, out: Out) -> None:
        self._notify(req, len(self.sleepers), out)

    def _notify(self, req: Request, n: int, out: Out) -> None:
        if self.owner != req.owner:
            raise Refusal("RuntimeError", "cannot notify on un-acquired lock")
        while n > 0 and self.sleepers:
            sleeper = self.sleepers.popleft()
            if sleeper.done or sleeper.stage != 0:
                continue
            sleeper.stage = 1
            self.waiters.append(sleeper)  # it takes the lock back once the notifier lets go
            n -= 1
        out.ok(req)

    def expire(self, req: Request, out: Out) -> None:
        if req.method != "wait":
            out.ok(req, False)
        elif req.stage == 0:  # timed out asleep: it still has to take the lock back
            req.stage = 2
            self.waiters.append(req)
            self._grant(out)

    def peer_gone(self, peer: str, out: Out) -> None:
        _abandon(self.sleepers, peer)
        super().peer_gone(peer, out)


class Semaphore(_Waiting):
    KIND = "Semaphore"

    def __init__(self, args: list[Any], frames: list[Any]) -> None:
        self.value: int = _arg(args, 0, 1, int)
        if self.value < 0:
            raise Refusal("ValueError", "semaphore initial value must be >= 0")
        self.initial = self.value
        self.waiters: deque[Request] = deque()

    def do_acquire(self, req: Request, out: Out) -> None:
        if self.value > 0:
            self.value -= 1
            out.ok(req, True)
        else:
            self._park_or_refuse(req, out)

    def do_release(self, req: Request, out: Out) -> None:
        n = _arg(req.args, 0, 1, int)
        if n < 1:
            raise Refusal("ValueError", "n must be one or more")
        self._check_bound(n)
        self.value += n
        out.ok(req)
        while self.value > 0 and self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done:
                self.value -= 1
                out.ok(waiter, True)

    def _check_bound(self, n: int) -> None:
        pass

    def do_get_value(self, req: Request, out: Out) -> None:
        out.ok(req, self.value)

    # peer_gone: counts are not owned (another peer may release what this one
    # took), so only the departed peer's parked acquires go (_Waiting's).


class BoundedSemaphore(Semaphore):
    KIND = "BoundedSemaphore"

    def _check_bound(self, n: int) -> None:
        if self.value + n > self.initial:
            raise Refusal("ValueError", "Semaphore released too many times")


# --- events and barriers --------------------------------------------------------------------


class Event(_Waiting):
    KIND = "Event"

    def __init__(self, args: list[Any], frames: list[Any]) -> None:
        self.flag = False
        self.waiters: list[Request] = []

    def do_is_set(self, req: Request, out: Out) -> None:
        out.ok(req, self.flag)

    def do_set(self, req: Request, out: Out) -> None:
        self.flag = True
        out.ok(req)
        for waiter in _live(self.waiters):
            out.ok(waiter, True)
        self.waiters = []

    def do_clear(self, req: Request, out: Out) -> None:
        self.flag = False
        out.ok(req)

    def do_wait(self, req: Request, out: Out) -> None:
        if self.flag:
            out.ok(req, True)
        else:
            self._park_or_refuse(req, out)


class Barrier(Shared):
    """threading.Barrier without ``action`` (an action is user code: not in the daemon)."""

    KIND = "Barrier"

    def __init__(self, args: list[Any], frames: list[Any]) -> None:
        self.parties: int = _arg(args, 0, 1, int)
        if self.parties < 1:
            raise Refusal("ValueError", "parties must be >= 1")
        default = _arg(args, 1, None, (int, float))
        self.default_timeout: float = -1.0 if default is None else max(0.0, float(default))
        self.waiting: list[Request] = []
        self.broken = False

    def do_wait(self, req: Request, out: Out) -> None:
        if self.broken:
            raise Refusal("BrokenBarrierError", "")
        self.waiting.append(req)
        if len(self.waiting) == self.parties:
            for index, waiter in enumerate(self.waiting):
                out.ok(waiter, index)
            self.waiting = []
        else:
            timeout = self.default_timeout if req.timeout < 0 else req.timeout
            if timeout == 0:
                self._break(out)
            else:
                out.park(req, timeout)

    def _break(self, out: Out) -> None:
        self.broken = True
        for waiter in _live(self.waiting):
            out.fail(waiter, "BrokenBarrierError", "")
        self.waiting = []

    def do_abort(self, req: Request, out: Out) -> None:
        self._break(out)
        out.ok(req)

    def do_reset(self, req: Request, out: Out) -> None:
        self._break(out)
        self.broken = False
        out.ok(req)

    def do_parties(self, req: Request, out: Out) -> None:
        out.ok(req, self.parties)

    def do_n_waiting(self, req: Request, out: Out) -> None:
        out.ok(req, len(self.waiting))

    def cancel(self, req: Request, out: Out) -> None:
        # As a thread interrupted in threading.Barrier.wait: that party leaves, the others wait on.
        self.waiting = [r for r in self.waiting if r is not req]

    def do_broken(self, req: Request, out: Out) -> None:
        out.ok(req, self.broken)

    def expire(self, req: Request, out: Out) -> None:
        self._break(out)

    def peer_gone(self, peer: str, out: Out) -> None:
        # A party that left can never arrive: the others would wait forever.
        if any(r.peer == peer for r in self.waiting):
            _abandon(self.waiting, peer)
            out.notes.append(f"Barrier broken: a waiting client ({peer}) left")
            self._break(out)


# --- values ---------------------------------------------------------------------------


class Value(Shared):
    """The pickled value, kept as bytes; ``typecode`` is only remembered."""

    KIND = "Value"

    def __init__(self, args: list[Any], frames: list[Any]) -> None:
        self.typecode: str = _arg(args, 0, "", str)
        self.frames = [bytes(f) for f in frames]

    def do_get(self, req: Request, out: Out) -> None:
        out.ok(req, frames=self.frames)

    def do_set(self, req: Request, out: Out) -> None:
        self.frames = [bytes(f) for f in req.frames]
        out.ok(req)


class Array(Shared):
    """An array.array of ``typecode`` as raw bytes; indexing is arithmetic on them.

    Index arguments: ``["i", index]`` or ``["s", start, stop, step]`` (None allowed),
    exactly what a Python index or slice says.
    """

    KIND = "Array"

    def __init__(self, args: list[Any], frames: list[Any]) -> None:
        self.typecode: str = _arg(args, 0, "", str)
        if len(self.typecode) != 1 or self.typecode not in array.typecodes:
            raise Refusal("ValueError", f"bad typecode (must be one of {array.typecodes}): {self.typecode!r}")
        self.size = array.array(self.typecode).itemsize
        self.data = bytearray(b"".join(bytes(f) for f in frames))
        if len(self.data) % self.size:
            raise Refusal("ValueError", "array bytes are not a whole number of items")

    def __len__(self) -> int:
        return len(self.data) // self.size

    def _where(self, args: list[Any]) -> tuple[bool, range]:
        """(is a slice, the item indices it names)."""
        if not args or args[0] not in ("i", "s"):
            raise Refusal("TypeError", "array indices must be integers or slices")
        n = len(self)
        if args[0] == "i":
            i = _arg(args, 1, 0, int)
            if i < 0:
                i += n
            if not 0 <= i < n:
                raise Refusal("IndexError", "array index out of range")
            return False, range(i, i + 1)
        parts = [args[k] if len(args) > k else None for k in (1, 2, 3)]
        if not all(p is None or (isinstance(p, int) and not isinstance(p, bool)) for p in parts):
            raise Refusal("TypeError", "slice indices must be integers or None")
        if parts[2] == 0:
            raise Refusal("ValueError", "slice step cannot be zero")
        return True, range(n)[slice(*parts)]

    def _cut(self, where: range) -> bytes:
        s = self.size
        if where.step == 1:
            return bytes(self.data[where.start * s : where.stop * s])
        return b"".join(self.data[i * s : (i + 1) * s] for i in where)

    def do_len(self, req: Request, out: Out) -> None:
        out.ok(req, len(self))

    def do_getitem(self, req: Request, out: Out) -> None:
        _, where = self._where(req.args)
        out.ok(req, frames=[self._cut(where)])

    def do_setitem(self, req: Request, out: Out) -> None:
        is_slice, where = self._where(req.args)
        data = b"".join(bytes(f) for f in req.frames)
        s = self.size
        if len(data) % s:
            raise Refusal("TypeError", "assigned bytes are not a whole number of items")
        if is_slice and where.step == 1:
            self.data[where.start * s : max(where.start, where.stop) * s] = data  # may resize
        elif len(data) // s != len(where):
            raise Refusal(
                "ValueError" if is_slice else "TypeError",
                f"attempt to assign array of size {len(data) // s} to extended slice of size {len(where)}",
            )
        else:
            for k, i in enumerate(where):
                self.data[i * s : (i + 1) * s] = data[k * s : (k + 1) * s]
        out.ok(req)


KINDS: dict[str, type[Shared]] = {
    cls.KIND: cls
    for cls in (Queue, JoinableQueue, Lock, RLock, Condition, Semaphore, BoundedSemaphore, Event, Barrier, Value, Array)
}
