"""Shared synchronisation objects: locks, semaphores, events, conditions, barriers.

They hold no data, only who holds them and who waits (parked requests).
See ``dmp_server.shared`` for the contract every kind follows.
"""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

from dmp_server.shared import Out, Owner, Refusal, Request, Shared, abandon, arg, live

# --- locks ---------------------------------------------------------------------------


class _Waiting(Shared):
    """An object whose blocking calls park in ``waiters`` and answer False on timeout."""

    waiters: Any

    def expire(self, req: Request, out: Out) -> None:
        out.ok(req, False)

    def peer_gone(self, peer: str, out: Out) -> None:
        abandon(self.waiters, peer)

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
        n = arg(req.args, 0, 1, int)
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
        abandon(self.sleepers, peer)
        super().peer_gone(peer, out)


class Semaphore(_Waiting):
    KIND = "Semaphore"

    def __init__(self, args: list[Any], frames: list[Any]) -> None:
        self.value: int = arg(args, 0, 1, int)
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
        n = arg(req.args, 0, 1, int)
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
        for waiter in live(self.waiters):
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
        self.parties: int = arg(args, 0, 1, int)
        if self.parties < 1:
            raise Refusal("ValueError", "parties must be >= 1")
        default = arg(args, 1, None, (int, float))
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
        for waiter in live(self.waiting):
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
            abandon(self.waiting, peer)
            out.notes.append(f"Barrier broken: a waiting client ({peer}) left")
            self._break(out)
