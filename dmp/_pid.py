"""This process's id, read without a system call (glibc no longer caches getpid).

``_pid.here`` is set at import and again in the child after every ``os.fork()``
(``os.register_at_fork``), which is how multiprocessing's fork start method,
dmp's workers and object hosts are made: hot paths compare it with the pid
they saw when they made a connection, to notice a forked child.
"""

from __future__ import annotations

import os

here = os.getpid()


def _forked() -> None:
    global here
    here = os.getpid()


os.register_at_fork(after_in_child=_forked)
