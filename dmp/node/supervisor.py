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

import dataclasses
import itertools
import multiprocessing
import os
import secrets
import select
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from dmp import deaths
from dmp.deaths import WorkerDeath
from dmp.node import slot as slot_mod
from dmp.node import worker as worker_mod
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


def _is_stopped(pid: int) -> bool:
    """True if the process is stopped by a signal or traced (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("T", "t")


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
        self._ctx: Any = multiprocessing.get_context(method)
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
        """Fork the initial workers (from the calling thread)."""
        for _ in range(self.count):
            self.spawn()

    def spawn(self) -> str:
        n = next(self._serial)
        # The routing identity: unguessable, so nobody can take it first.
        worker_id = f"{self.node}/{self._tag}-{n}-{secrets.token_hex(8)}"
        ours: socket.socket | None = None
        theirs: socket.socket | None = None
        if self.method == "fork":
            slot = slot_mod.new_slot()
            target: Any = worker_mod.worker_main
            cfg = dataclasses.replace(self.template, worker_id=worker_id, slot=slot)
            if self.pipes is not None:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                for made in (ours, theirs):
                    made.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PIPE_BUFFER_BYTES)
                # The worker closes every parent end it inherits, its own pipe's included.
                cfg.pipe, cfg.close_in_child = theirs, (*self.pipes.parent_ends, ours)
            args: tuple[Any, ...] = (cfg,)
        else:
            # A fresh interpreter: the config travels cloudpickled, the slot as a passed fd.
            import cloudpickle

            slot = slot_mod.FdSlot()
            cfg = dataclasses.replace(self.template, worker_id=worker_id, slot=None)
            args = (cloudpickle.dumps(cfg), slot)
            target = worker_mod.spawned_main
        proc = self._ctx.Process(target=target, args=args, name=f"{self.name_prefix}-{n}", daemon=True)
        # The worker starts with SIGTERM blocked until its initializer is done
        # (worker_main unblocks it); the mask is inherited through fork and exec.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            proc.start()
        except BaseException:
            for end in (ours, theirs):
                if end is not None:
                    end.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if ours is not None and theirs is not None:
            theirs.close()  # the worker's alone now: a worker forked later must not inherit it
            self.pipes.add(worker_id, ours)
        handle = _Handle(worker_id, proc, slot)
        self.handles[proc.sentinel] = handle
        self.by_id[worker_id] = handle
        return worker_id

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
            if not pid or not _is_stopped(pid):
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

    def kill(self, worker_id: str) -> None:
        handle = self.by_id.get(worker_id)
        if handle is not None and handle.process.pid:
            handle.killed = handle.killed or "asked"
            try:
                os.kill(handle.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self, *, kill: bool, timeout: float = 5.0) -> None:
        """End every worker: SIGTERM (or SIGKILL), then reap all of them."""
        self.respawn = False
        sig = signal.SIGKILL if kill else signal.SIGTERM
        for handle in list(self.handles.values()):
            pid = handle.process.pid
            handle.killed = handle.killed or "asked"
            if pid and handle.process.exitcode is None:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout  # one deadline for all, not one each
        for fd, handle in list(self.handles.items()):
            handle.process.join(max(0.0, deadline - time.monotonic()))
            if handle.process.exitcode is None:
                os.kill(handle.process.pid, signal.SIGKILL)
                handle.process.join(5.0)
            self.reap(fd)
