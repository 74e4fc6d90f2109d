"""Callers taking turns at one reactor (internal): lead, follow, step back, hand over.

    caller waiting on a result --wait()--> leads: runs poll + handle itself
        (its own reply wakes no other thread), or follows: blocks on its own event
    the serving thread --serve()--> runs steps whenever no caller leads
    any thread --run_now(fn)--> fn on the turn at once if nobody holds it

The local engine wraps the embedded daemon's ``poll``/``handle``
(dmp_server/daemon.py); the cluster's RemoteLink (dmp/client/link.py) wraps
its DEALER's. Exactly one thread at a time holds the turn, so what a step
does needs no lock of its own. In the main thread a step is ``critical``
(a Ctrl-C waits for it to end) and only its poll is ``interruptible``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from dmp.client.sigint import critical, interruptible
from dmp.wire.wakeup import Wakeup

__all__ = ["Turns", "Wakeup"]

# After a caller led, the serving thread stays out of its way this long (the
# caller will likely wait again at once), checking back at that pace; a
# leader steps in slices of LEAD_SLICE_S, noticing stop(); a caller asking
# the serving thread to hand over waits this long per try.
STEP_BACK_S = 0.01
LEAD_SLICE_S = 0.1
HANDOVER_S = 0.02


class Turns:
    """Whoever holds the turn runs ``handle(poll(limit))``: a waiting caller, else the serving thread.

    ``wake()`` must make a ``poll`` in progress return soon (from any thread).
    ``reenter``: a callback running on the turn that waits on another result
    keeps stepping itself (the client link) rather than blocking (the
    embedded daemon, whose handlers are not reentrant; multiprocessing's
    result thread blocks too).
    ``first_poll``: what a leading caller polls with first in each wait (the
    client link's look before it sleeps); ``poll`` after that, and always in
    the serving thread.
    """

    def __init__(
        self,
        poll: Callable[[float | None], Any],
        handle: Callable[[Any], None],
        wake: Callable[[], None],
        *,
        reenter: bool,
        first_poll: Callable[[float | None], Any] | None = None,
    ) -> None:
        self._poll = poll
        self._first_poll = first_poll or poll
        self._handle = handle
        self._wake = wake
        self._reenter = reenter
        self._turn = threading.Lock()  # held for a whole step, poll included
        self._runner = 0  # thread ident holding the turn
        self._leader = 0  # thread ident of a caller leading
        self._want_lead = False
        self._last_led = 0.0
        self._resume = threading.Event()  # the serving thread's step-back wait
        self._count = threading.Lock()
        self._followers = 0
        self.stopped = False
        self._closed = False

    def runs_here(self) -> bool:
        """Whether this thread holds the turn right now (a callback, say)."""
        return self._runner == threading.get_ident()

    def _step(self, limit: float | None) -> None:
        with critical:  # a Ctrl-C never lands halfway through handling
            with interruptible:  # ... but at once while polling
                ready = self._poll(limit)
            self._handle(ready)

    # --- callers ------------------------------------------------------------------------

    def wait(self, done: Callable[[], bool], block: Callable[[float | None], Any], timeout: float | None) -> None:
        """Return once ``done()`` or after ``timeout`` seconds, leading the reactor if nobody does.

        ``block(timeout)`` is how a follower waits: on the event its
        result's delivery sets. A Ctrl-C is raised only while polling or
        blocking (see dmp.client.sigint).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        me = threading.get_ident()
        while not done():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            if self._runner == me and self._reenter and not self.stopped:
                self._lead(done, deadline)  # nobody else can step while this callback runs
                return
            if self._runner == me or self.stopped:
                with interruptible:
                    block(remaining)
                return
            with critical:  # never leave the turn taken and not given back
                if not self._take_turn():
                    if not self._leader:
                        continue  # the serving thread is handing over
                    self._follow(block, remaining)
                    return
                try:
                    self._want_lead = False
                    self._leader = self._runner = me
                    self._lead(done, deadline)
                finally:
                    self._leader = self._runner = 0
                    self._last_led = time.monotonic()
                    self._turn.release()
                    if self._followers:
                        self._last_led = 0.0
                        self._resume.set()  # the serving thread serves them from now on

    def _lead(self, done: Callable[[], bool], deadline: float | None) -> None:
        # Always inside a critical section already (wait()'s, or the step running the callback
        # that waits): each step needs only its interruptible poll, not a critical of its own.
        poll, handle = self._first_poll, self._handle
        while not done() and not self.stopped:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            with interruptible:
                ready = poll(LEAD_SLICE_S if left is None else min(LEAD_SLICE_S, left))
            poll = self._poll
            handle(ready)

    def _take_turn(self) -> bool:
        """The turn for a caller, asking the serving thread to step back if it has it."""
        if self._turn.acquire(blocking=False):
            return True
        if self._leader:
            return False
        self._want_lead = True
        self._wake()
        if self._turn.acquire(timeout=HANDOVER_S):
            return True
        self._want_lead = False  # a stale wish would keep the serving thread out for good
        return False

    def _follow(self, block: Callable[[float | None], Any], remaining: float | None) -> None:
        with self._count:
            self._followers += 1
        try:
            with interruptible:
                block(remaining)
        finally:
            with self._count:
                self._followers -= 1

    def run_now(self, fn: Callable[..., Any], *args: Any) -> bool:
        """From any thread: ``fn(*args)`` on the turn if nobody holds it; False (not run) otherwise."""
        with critical:
            if not self._turn.acquire(blocking=False):
                return False
            try:
                if self._closed:
                    return False
                self._runner = threading.get_ident()
                fn(*args)
                return True
            finally:
                self._runner = 0
                self._turn.release()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The calling thread holds the turn for the block without stepping (the
        local engine forks its first workers so, its serving thread already
        started); afterwards the serving thread stays out of the way as after
        a caller led, so the pool's first calls are handled, and waited on,
        on their own thread."""
        with critical:
            self._last_led = time.monotonic()  # a serving thread started meanwhile steps back, not waits here
            self._turn.acquire()
            self._runner = threading.get_ident()
            try:
                yield
            finally:
                self._runner = 0
                self._last_led = time.monotonic()
                self._turn.release()

    # --- the serving thread ---------------------------------------------------------------------

    def serve(self, limit: float | None) -> None:
        """One step unless a caller leads (then step back a moment); returns within about ``limit``."""
        if bool(self._leader or self._want_lead) or time.monotonic() - self._last_led < STEP_BACK_S:
            self._resume.wait(STEP_BACK_S if limit is None else min(STEP_BACK_S, limit))
            self._resume.clear()
            return
        if not self._turn.acquire(timeout=STEP_BACK_S):
            return
        try:
            if self._leader or self._want_lead or time.monotonic() - self._last_led < STEP_BACK_S:
                return  # a caller led while this thread waited for the turn: out of its way, as above
            self._runner = threading.get_ident()
            self._step(limit)
        finally:
            self._runner = 0
            self._turn.release()

    def stop(self) -> None:
        """From any thread: leaders let go within a slice, :meth:`serve` returns soon, waits only block."""
        self.stopped = True
        self._wake()
        self._resume.set()

    def close(self, fn: Callable[[], None], timeout: float = 5.0) -> None:
        """Stop, then ``fn()`` on the turn (or after ``timeout`` if a callback will not let go); no turns after."""
        self.stop()
        held = self._turn.acquire(timeout=timeout)
        try:
            self._closed = True
            fn()
        finally:
            if held:
                self._turn.release()
