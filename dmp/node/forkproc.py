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

:func:`start_all` forks several of them back to back: what ``start()`` does
around each fork (multiprocessing's checks, flushing stdio, the two pipes, and
the bookkeeping after it) is done for all of them before the first fork and
after the last, since every page written between two forks is copied twice.

``die_with_parent``: what a node's forked worker does first about its node.
"""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Sequence
from multiprocessing import popen_fork
from multiprocessing import process as _process
from multiprocessing import util as _util
from multiprocessing.context import ForkProcess as _MpForkProcess
from typing import Any

# multiprocessing's internals that start() uses (not in its stubs).
process: Any = _process
util: Any = _util


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


def start_all(procs: Sequence[Any], *, freeze: bool = False) -> None:
    """``p.start()`` for each of ``procs`` (:class:`ForkProcess` es), with nothing but the forks in between.
    ``freeze`` (the caller turned the collector off): each child's first acts
    are ``gc.freeze()`` and ``gc.enable()`` (see Supervisor._launch).

    Each child closes every pipe end made here but its own two (a sibling
    holding a worker's sentinel end open would hide that worker's death;
    ``start()`` one by one left the earlier siblings' parent ends open in the
    later ones). If a fork fails, the processes forked before it are started
    as ever (``pid`` set), the rest are left unstarted with their pipes
    closed, and the error is raised.
    """
    for proc in procs:  # BaseProcess.start's checks
        proc._check_closed()
        assert proc._popen is None, "cannot start a process twice"
        assert proc._parent_pid == os.getpid(), "can only start a process object created by current process"
    assert not process.current_process()._config.get("daemon"), "daemonic processes are not allowed to have children"
    process._cleanup()
    util._flush_std_streams()
    # Per process: parent_r, child_w (its sentinel pipe), child_r, parent_w (its parent-death pipe).
    pipes = [(*os.pipe(), *os.pipe()) for _ in procs]
    every = [fd for fds in pipes for fd in fds]
    pids: list[int] = []
    try:
        for proc, (_, child_w, child_r, _) in zip(procs, pipes):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    if freeze:
                        gc.freeze()
                        gc.enable()
                    for fd in every:
                        if fd != child_w and fd != child_r:
                            os.close(fd)
                    code = proc._bootstrap(parent_sentinel=child_r)
                finally:
                    os._exit(code)
            pids.append(pid)
    finally:
        for i, (proc, (parent_r, child_w, child_r, parent_w)) in enumerate(zip(procs, pipes)):
            if i >= len(pids):
                for fd in (parent_r, child_w, child_r, parent_w):
                    os.close(fd)
                continue
            os.close(child_w)
            os.close(child_r)
            popen = Popen.__new__(Popen)  # what Popen.__init__ and _launch leave in the parent
            popen.returncode = None
            popen.finalizer = None
            popen.pid, popen.sentinel, popen._parent_w = pids[i], parent_r, parent_w
            proc._popen = popen
            proc._sentinel = parent_r
            del proc._target, proc._args, proc._kwargs  # as start() does (bpo-30775)
            process._children.add(proc)


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
