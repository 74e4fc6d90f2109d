"""Credit: the one count of a client's submitted-but-unfinished tasks.

    feeder --take(n, alive)--> waits while the count is over the limit
    apply_async / Process --charge(n)--> counted at once, never waits
    result arrives / imap item consumed / task never sent --release(n)

The session (``dmp.client.session``) is the only owner: it charges on submit
and releases on arrival, or, for a sink whose results are only finished when
the caller consumes them (imap), hands that sink ``release`` to call then.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

# How often a feeder waiting for credit checks that its job is still wanted.
ALIVE_CHECK_S = 0.5


class Credit:
    """Counts tasks submitted and not yet finished against ``limit``; thread-safe."""

    __slots__ = ("_cond", "_outstanding", "_waiting", "limit")

    def __init__(self, limit: int) -> None:
        """Raises ValueError if ``limit`` is not a positive int."""
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"credit limit must be a positive int, not {limit!r}")
        self.limit = limit
        self._outstanding = 0
        self._waiting = 0  # feeders in take(): release() notifies only when there is one
        self._cond = threading.Condition(threading.Lock())

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def take(self, n: int, alive: Callable[[], bool]) -> bool:
        """Wait until ``n`` more tasks fit, then count them; False if ``alive()`` turns false first.

        A batch bigger than the limit is let through when nothing is
        outstanding, so it can never wait forever.
        """
        with self._cond:
            while self._outstanding > 0 and self._outstanding + n > self.limit:
                if not alive():
                    return False
                self._waiting += 1
                try:
                    self._cond.wait(ALIVE_CHECK_S)
                finally:
                    self._waiting -= 1
            self._outstanding += n
            return True

    def charge(self, n: int) -> None:
        """Count ``n`` tasks that must not wait (apply_async and Process never block)."""
        with self._cond:
            self._outstanding += n

    def release(self, n: int) -> None:
        """``n`` counted tasks are finished (or were never sent); wake a waiting feeder."""
        with self._cond:
            self._outstanding -= n
            if self._waiting:  # Condition.notify costs a few microseconds even with nobody waiting
                self._cond.notify()
