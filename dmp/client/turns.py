"""Callers taking turns at dmp's I/O (internal): wake-ups and the followers' side.

The client link (dmp/remote.py) and the embedded reactor
(dmp_server/manager.py) let one waiting thread lead, serving the socket
itself. Every other waiting thread follows: it blocks on its own event, and
the leader, when it lets go, wakes the serving thread for it if any are
counted here.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from dmp.client.sigint import interruptible


class Wakeup:
    """An eventfd that one thread polls and any thread may poke.

    It is closed once its owner is gone, never at interpreter exit: a daemon
    thread may still be polling it then, and a closed number can be reused.
    """

    __slots__ = ("fd",)

    def __init__(self, owner: object) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        weakref.finalize(owner, os.close, self.fd).atexit = False

    def poke(self) -> None:
        try:
            os.eventfd_write(self.fd, 1)
        except OSError:
            pass

    def clear(self) -> None:
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass


class Followers:
    __slots__ = ("_lock", "count")

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def wait(self, block: Callable[[float | None], Any], remaining: float | None) -> None:
        """``block(remaining)`` as a follower; a Ctrl-C lands here at once (see dmp.client.sigint)."""
        with self._lock:
            self.count += 1
        try:
            with interruptible:
                block(remaining)
        finally:
            with self._lock:
                self.count -= 1
