"""The local pool's fork Process: multiprocessing's, minus the bookkeeping it does after the fork.

    Supervisor._prepare --> ForkProcess(target=worker_main, ...) --start()--> Popen._launch:
        two pipes, os.fork(); the child runs the Process's own _bootstrap, as ever;
        the parent keeps the sentinel and the parent end, closed by close() (the
        supervisor closes every worker it reaps) or, failing that, when collected

multiprocessing's fork Popen registers a ``util.Finalize`` for the parent's
two pipe ends right after each fork, and every page the pool's process
writes then is copied (the worker shares it): ~30 page copies a worker
(~0.1 ms) that a plain close needs none of. Everything else, the child's
bootstrap, ``current_process()``, exit codes, ``join``/``is_alive``, is
multiprocessing's.

``die_with_parent``: what a node's forked worker does first about its node.
"""

from __future__ import annotations

import os
import signal
from multiprocessing import popen_fork
from multiprocessing.context import ForkProcess as _MpForkProcess
from typing import Any


class Popen(popen_fork.Popen):
    _parent_w = -1

    def _launch(self, process_obj: Any) -> None:
        code = 1
        parent_r, child_w = os.pipe()
        child_r, parent_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(parent_r)
                os.close(parent_w)
                code = process_obj._bootstrap(parent_sentinel=child_r)
            finally:
                os._exit(code)
        os.close(child_w)
        os.close(child_r)
        self.sentinel = parent_r
        self._parent_w = parent_w

    def close(self) -> None:
        fds, self.sentinel, self._parent_w = (self.sentinel, self._parent_w), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except (AttributeError, OSError):
            pass


class ForkProcess(_MpForkProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Popen:
        return Popen(process_obj)


def die_with_parent(parent: int) -> bool:
    """Node workers get SIGKILL when their node dies (Linux PR_SET_PDEATHSIG);
    False if the node (pid ``parent``) is gone already.

    Safe for node workers: the node forks them from its main thread, which
    lives as long as the node. (Local pools are forked from any user thread,
    so they rely on the parent-pid check instead.) It covers no death before
    it is made: a node SIGKILLed as it forks a replacement (Slurm kills a step's
    processes one by one) would orphan us for good, hence the check after it.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    return not parent or os.getppid() == parent
