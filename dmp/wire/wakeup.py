"""A wake-up fd (internal): an eventfd that one thread polls and any thread may poke.

The manager daemon, the client link and the object host each poll one beside
their ZeroMQ socket, so another thread (or a signal handler) can make a poll
in progress return at once.
"""

from __future__ import annotations

import os
import weakref


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
