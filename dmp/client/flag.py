"""A one-shot ``threading.Event`` for results: set once, never cleared.

``threading.Event`` is Python code around a ``Condition``: creating one, and
setting it, each cost a few microseconds, paid on every ``apply_async``. A
flag is a bare lock held from birth: ``set()`` releases it, and each waiter
that gets it passes it on at once, so every waiter wakes. Waits are
interruptible (Ctrl-C) exactly like ``Event.wait``: both block in
``lock.acquire(timeout)``.
"""

from __future__ import annotations

import _thread


class Flag:
    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._set = False
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        try:
            self._lock.release()
        except RuntimeError:  # two threads raced to set it: released once already
            pass

    def wait(self, timeout: float | None = None) -> bool:
        """Block until set or ``timeout`` seconds pass; whether it is set."""
        if self._set:
            return True
        if self._lock.acquire(True, -1 if timeout is None else max(timeout, 0.0)):
            self._lock.release()  # the next waiter wakes too
        return self._set
