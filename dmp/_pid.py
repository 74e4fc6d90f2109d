"""This process's id, read without a system call (glibc no longer caches getpid).

``_pid.here`` is set at import and again in the child after every ``os.fork()``
(``os.register_at_fork``), which is how multiprocessing's fork start method,
dmp's workers and object hosts are made: hot paths compare it with the pid
they saw when they made a connection, to notice a forked child.

This is dmp's one Python at-fork handler, and a local pool's process does
not import this module (``dmp._lazy``'s and ``dmp.client.sigint``'s handlers
are builtin methods): the rest of dmp's per-process state (the door
connections, the ZeroMQ context) is kept with the pid it is for and reset
where it is used. Each Python function a forked child runs costs it a page
copy or two, and a pool's workers are forked children.
"""

from __future__ import annotations

import os

here = os.getpid()


def _forked() -> None:
    global here
    here = os.getpid()


os.register_at_fork(after_in_child=_forked)
