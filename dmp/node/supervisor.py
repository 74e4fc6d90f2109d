"""Forks worker processes, watches their sentinels, reports how they ended.

Used by the local engine (workers forked from the user's process, so globals
set before the pool exists are visible) and by the worker node daemon. The
owner registers the sentinels in its reactor's poller (:meth:`watch`); a
readable sentinel is a death to :meth:`reap`, which says which task the
worker was running at the time. On its timer the owner calls
:meth:`kill_overdue`: a worker whose task ran past the deadline in its slot
(its job's ``task_timeout``) is killed, and its reaping says so; and
:meth:`kill_over_memory`: with a worker memory limit, a busy worker whose
resident set (``/proc/PID/statm``) passed it is killed, its task blamed.

Every reaping carries a :class:`dmp.deaths.WorkerDeath`: the exit code, plus
what the supervisor knows of it (its own kills; for any other SIGKILL, the
memory cgroup's OOM-kill count, dmp.node.oomwatch).
"""

from __future__ import annotations

import _signal
import dataclasses
import gc
import itertools
import multiprocessing
import os
import select
import signal
import socket
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from dmp import deaths
from dmp.deaths import WorkerDeath
from dmp.node import forkproc
from dmp.node import slot as slot_mod
from dmp.node import worker as worker_mod
from dmp.node.cancelkill import is_stopped, kill_if_running
from dmp.node.oomwatch import OomCounter

_pool_counter = itertools.count(1)


@dataclass(slots=True)
class Exited:
    worker: str
    pid: int
    exitcode: int
    running: int  # task key it was running, -1 for none
    timed_out: bool = False  # killed by kill_overdue for running ``running`` too long
    cause: WorkerDeath = dataclasses.field(default_factory=lambda: WorkerDeath(deaths.UNKNOWN))


@dataclass(slots=True)
class _Handle:
    worker_id: str
    process: Any
    slot: Any
    stopped_since: float = 0.0  # monotonic time it was first seen stopped (0: running)
    overdue: int = -1  # key of the task it was killed for running past its deadline
    over_memory: int = -1  # key of the task it was killed for passing the memory limit
    rss: int = 0  # its resident set then, bytes
    killed: str = ""  # why we killed it otherwise: "stopped" (kill_frozen), "asked" (kill)


@dataclass(slots=True)
class _Spawn:
    """A worker made ready to fork (Supervisor._prepare)."""

    handle: _Handle
    cfg: worker_mod.WorkerConfig | None  # forked workers' (spawned ones get a pickled copy)
    pipe: Any  # the daemon's end of its pipe (dmp_server.workerpipes), or None
    theirs: socket.socket | None  # the worker's end


_PAGE = os.sysconf("SC_PAGE_SIZE")
# Send buffer of each end of a local worker pipe (the kernel caps it at
# net.core.wmem_max): a large payload crosses in a few writes, not one per 208 KiB.
PIPE_BUFFER_BYTES = 4 << 20


def resident_bytes(pid: int) -> int:
    """The resident set of ``pid`` in bytes (``/proc/PID/statm``), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _signal_running(sentinel: int, handle: _Handle, sig: int) -> bool:
    """Send ``sig`` to the worker of ``handle`` if it still runs; whether it was sent.

    No exit code may also mean that another thread's multiprocessing._cleanup()
    (a pool started there) won the waitpid: the pid is then no longer the
    worker's to signal. Its ``sentinel`` tells: readable once it exited, while
    a running child's pid cannot have been reaped."""
    pid = handle.process.pid
    if not pid or handle.process.exitcode is not None or select.select([sentinel], [], [], 0)[0]:
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


class Supervisor:
    """Keeps ``count`` worker processes alive until told to stop."""

    def __init__(
        self, template: worker_mod.WorkerConfig, *, count: int, name_prefix: str | None = None, method: str = "fork",
        memory_limit: int = 0,
    ) -> None:
        """``method``: the start method of the workers (local mode may spawn them;
        a node always forks, from a process that holds no live context).
        ``memory_limit``: bytes of resident memory a busy worker may use (0: no limit)."""
        self.template = template
        self.method = method
        name_prefix = name_prefix or f"{'ForkServer' if method == 'forkserver' else method.capitalize()}PoolWorker"
        self.node = template.node
        self.count = count
        self.name_prefix = name_prefix
        self.handles: dict[int, _Handle] = {}  # sentinel fd -> handle
        self.by_id: dict[str, _Handle] = {}
        self._serial = itertools.count(1)
        self._tag = f"{os.getpid()}-{next(_pool_counter)}"
        self.respawn = True
        self.memory_limit = memory_limit
        self._oom = OomCounter()
        # Set by an embedded daemon (dmp_server.workerpipes.WorkerPipes): forked
        # workers then talk to it over a socketpair made before the fork.
        self.pipes: Any = None

    def start(self) -> None:
        """Fork the initial workers (from the calling thread), back to back.

        Everything they need (configs, slots, pipes, Process objects) is made
        first: each page the parent writes after a fork is copied (a page
        fault of ~3 µs on a small VM), so the less it does between forks,
        the sooner the workers run."""
        self._launch([self._prepare() for _ in range(self.count)], freeze=True)

    def spawn(self) -> str:
        """Fork one worker (a replacement); its worker id."""
        return self._launch([self._prepare()])[0]

    def _prepare(self) -> _Spawn:
        n = next(self._serial)
        # The routing identity: unguessable, so nobody can take it first.
        worker_id = f"{self.node}/{self._tag}-{n}-{os.urandom(8).hex()}"
        pipe: Any = None
        theirs: socket.socket | None = None
        cfg: worker_mod.WorkerConfig | None = None
        if self.method == "fork":
            slot = slot_mod.new_slot()
            target: Any = worker_mod.worker_main
            cfg = self.template.for_worker(worker_id, slot)
            cfg.parent = os.getpid()  # forked by us: gone by the time it starts, it must not serve (worker_main)
            if self.pipes is not None:
                pipe, theirs = self.pipes.prepare(worker_id, self.template.max_tasks, PIPE_BUFFER_BYTES)
                cfg.pipe, cfg.max_message = theirs, self.pipes.max_message
                cfg.loop = worker_mod.WorkerLoop(cfg, parent=os.getpid())
            args: tuple[Any, ...] = (cfg,)
        else:
            # A fresh interpreter: the config travels cloudpickled, the slot as a passed fd.
            import cloudpickle

            slot = slot_mod.FdSlot()
            args = (cloudpickle.dumps(self.template.for_worker(worker_id, None)), slot)
            target = worker_mod.spawned_main
        ctx: Any = multiprocessing.get_context(self.method) if self.method != "fork" else None
        process = forkproc.ForkProcess if ctx is None else ctx.Process
        proc = process(target=target, args=args, name=f"{self.name_prefix}-{n}", daemon=True)
        return _Spawn(_Handle(worker_id, proc, slot), cfg, pipe, theirs)

    def _launch(self, spawns: list[_Spawn], *, freeze: bool = False) -> list[str]:
        """Start the prepared workers; their worker ids. A worker that did not
        start raises, after the ones started before it are kept. ``freeze``:
        the collector's objects are frozen over the forks (see below)."""
        if self.pipes is not None:
            # Each worker closes every daemon end it inherits, its own pipe's
            # included, and the other new workers' ends too.
            ends = [*self.pipes.parent_ends, *(s.pipe.sock for s in spawns), *(s.theirs for s in spawns)]
            for s in spawns:
                if s.cfg is not None:
                    s.cfg.close_in_child = tuple(e for e in ends if e is not s.theirs)
        # The worker starts with SIGTERM blocked until its initializer is done
        # (worker_main unblocks it); the mask is inherited through fork and exec.
        # (_signal's own functions: signal's wrappers make enums of every signal number.)
        mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, (_signal.SIGTERM,))
        # A pool's first workers freeze the collector's objects first thing and
        # unfreeze them in worker_main, which puts them in the oldest generation:
        # their young collections then walk (write, copy) none of what the fork
        # gave them. The collector is off over the forks, so that none runs
        # before. (Not if the program froze objects or turned the collector off
        # itself; replacements are forked without it.) Frozen and unfrozen in
        # this process too, as was done, every young object here, the program's
        # garbage and the pool's, went to the oldest generation, and a full
        # collection was all that could free it: a program starting pools in a
        # loop, with little else to make young collections run (gc.freeze()
        # resets their count), kept all its cycles (docs/performance.md).
        frozen = freeze and self.method == "fork" and gc.get_freeze_count() == 0 and gc.isenabled()
        for s in spawns:
            if s.cfg is not None:
                s.cfg.gc_frozen = frozen
        if frozen:
            gc.disable()
        try:
            if self.method == "fork":
                forkproc.start_all([s.handle.process for s in spawns], freeze=frozen)
            else:
                for s in spawns:
                    s.handle.process.start()
        finally:
            if frozen:
                gc.enable()
            _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
            ids = []
            for s in spawns:
                handle = s.handle
                if s.theirs is not None:
                    s.theirs.close()  # the worker's alone now: a worker forked later must not inherit it
                if s.cfg is not None:
                    s.cfg.loop = None  # the worker's (a reference cycle here: cfg <-> its loop)
                if handle.process.pid is None:  # not started
                    if s.pipe is not None:
                        s.pipe.sock.close()
                    handle.slot.close()
                    continue
                if s.pipe is not None:
                    self.pipes.add(s.pipe, handle.process.pid)
                self.handles[handle.process.sentinel] = handle
                self.by_id[handle.worker_id] = handle
                ids.append(handle.worker_id)
        return ids

    def watch(self, poller: Any, watched: set[int]) -> set[int]:
        """Bring ``poller``'s registered sentinels up to date; returns the new set."""
        fds = set(self.handles)
        for fd in fds - watched:
            poller.register(fd, select.POLLIN)  # the same bit as zmq.POLLIN
        for fd in watched - fds:
            poller.unregister(fd)
        return fds

    def reap(self, fd: int) -> Exited | None:
        """The worker behind sentinel ``fd`` ended: collect it and say how."""
        handle = self.handles.pop(fd, None)
        if handle is None:
            return None
        self.by_id.pop(handle.worker_id, None)
        proc = handle.process
        proc.join(1.0)
        exitcode = proc.exitcode if proc.exitcode is not None else -signal.SIGKILL
        running = slot_mod.read_slot(handle.slot)
        handle.slot.close()
        pid = proc.pid or 0
        try:
            proc.close()
        except ValueError:
            pass
        timed_out = handle.overdue >= 0 and handle.overdue == running
        return Exited(handle.worker_id, pid, exitcode, running, timed_out, self._cause(handle, exitcode, running))

    def _cause(self, handle: _Handle, exitcode: int, running: int) -> WorkerDeath:
        if handle.over_memory >= 0 and handle.over_memory == running:
            return WorkerDeath(deaths.MEMORY_LIMIT, exitcode, handle.rss, self.memory_limit)
        if handle.killed == "stopped":
            return WorkerDeath(deaths.STOPPED, exitcode)
        if exitcode == -signal.SIGKILL and not handle.killed and handle.overdue < 0 and handle.over_memory < 0:
            # Nobody here sent it: the OOM killer's count tells whether it did.
            return WorkerDeath.of_exit(exitcode, oom=self._oom.explains_sigkill())
        return WorkerDeath.of_exit(exitcode)

    def kill_over_memory(self) -> list[tuple[int, int, int]]:
        """SIGKILL every busy worker whose resident set is over ``memory_limit``.

        Read from ``/proc/PID/statm`` (one small read per busy worker; idle
        ones are not charged for what they hold between tasks). Its death then
        reaches :meth:`reap`, whose cause says the task passed the limit.
        Returns the (pid, task key, RSS bytes) of those killed.
        """
        killed: list[tuple[int, int, int]] = []
        if not self.memory_limit:
            return killed
        for handle in self.handles.values():
            key = slot_mod.read_slot(handle.slot)
            pid = handle.process.pid
            if key < 0 or handle.over_memory == key or not pid:
                continue
            rss = resident_bytes(pid)
            if rss <= self.memory_limit:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            handle.over_memory, handle.rss = key, rss
            killed.append((pid, key, rss))
        return killed

    def kill_overdue(self, now: float) -> tuple[list[tuple[int, int]], float | None]:
        """SIGKILL every worker whose running task is past its deadline.

        Works whatever the task is doing (a C call, ``signal.pause()``): the
        kill needs nothing from the worker. Its death then reaches
        :meth:`reap`, whose ``Exited.timed_out`` says it was this. Returns
        the (pid, task key) pairs killed and the next deadline still ahead
        (None if no running task has one).
        """
        killed: list[tuple[int, int]] = []
        upcoming: float | None = None
        for handle in self.handles.values():
            key, deadline = slot_mod.read_deadline(handle.slot)
            if key < 0 or deadline <= 0.0 or handle.overdue == key:
                continue
            if deadline > now:
                upcoming = deadline if upcoming is None else min(upcoming, deadline)
                continue
            pid = handle.process.pid
            if not pid:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            handle.overdue = key
            killed.append((pid, key))
        return killed, upcoming

    def kill_frozen(self, now: float, limit: float) -> list[int]:
        """SIGKILL workers stopped (SIGSTOP, a debugger) for longer than ``limit``.

        Their node is alive and heartbeating, so nothing else would notice
        that they hold tasks without running them; killed, they go down the
        ordinary death road (their tasks retried elsewhere). Returns the pids.
        """
        killed = []
        for handle in list(self.handles.values()):
            pid = handle.process.pid
            if not pid or not is_stopped(pid):
                handle.stopped_since = 0.0
                continue
            if not handle.stopped_since:
                handle.stopped_since = now
            elif now - handle.stopped_since > limit:
                try:
                    os.kill(pid, signal.SIGKILL)
                    handle.killed = "stopped"
                    killed.append(pid)
                except ProcessLookupError:
                    pass
        return killed

    def pid_of(self, worker_id: str) -> int:
        handle = self.by_id.get(worker_id)
        return handle.process.pid if handle else 0

    def kill(self, worker_id: str, spare: Collection[int] = (), signum: int = signal.SIGKILL) -> int | None:
        """Send ``signum`` to worker ``worker_id``; with ``spare`` (a cancel's: the worker's
        other tasks) not if it runs one of them (dmp.node.cancelkill). Returns None
        if signalled (or unknown), else the task key it runs, left running."""
        handle = self.by_id.get(worker_id)
        if handle is None or not handle.process.pid:
            return None
        pid = handle.process.pid
        if spare:
            running = kill_if_running(pid, handle.slot, spare, signum)
            if running is None:
                handle.killed = handle.killed or "asked"
            return running
        handle.killed = handle.killed or "asked"
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
        return None

    def stop(self, *, kill: bool, timeout: float = 5.0) -> None:
        """End every worker: SIGTERM (or SIGKILL), then reap all of them."""
        self.respawn = False
        sig = signal.SIGKILL if kill else signal.SIGTERM
        for fd, handle in list(self.handles.items()):
            handle.killed = handle.killed or "asked"
            _signal_running(fd, handle, sig)
        deadline = time.monotonic() + timeout  # one deadline for all, not one each
        for fd, handle in list(self.handles.items()):
            handle.process.join(max(0.0, deadline - time.monotonic()))
            if _signal_running(fd, handle, signal.SIGKILL):
                handle.process.join(5.0)
            self.reap(fd)
