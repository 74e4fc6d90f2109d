"""A cancel's kill: SIGKILL a worker unless it runs a task the cancel must spare.

    manager --Kill(worker, spare)--> node (SignalWorker with ``spare``) / local supervisor
        SIGSTOP the worker, wait until it is stopped
        its slot (dmp.node.slot) shows one of ``spare`` --> SIGCONT, the manager hears WorkerSpared
        else (the cancelled task, a finished one, nothing) --> SIGKILL

The manager takes a worker's oldest assigned task for the running one, but
the worker may have finished it (its result batched, dmp.node.worker) and be
running another job's task: that task must not die for the cancel. ``spare``
is the worker's other assigned tasks, the ones the manager gave it after the
cancelled one: only a slot showing one of them proves the cancelled task is
over. A slot showing nothing or an older task may mean the cancelled task
is next, already in the worker's queue (its ForgetJobs not read yet): that
worker is killed, which costs its process, never another task's run, and
never lets a cancelled task run on (a cancelled Process that sleeps forever
would hold its worker for good). Reading the slot and then signalling would
leave a window (the worker starts the next task between the two); a stopped
worker cannot move on, so the slot it shows is what dies.

The caller waits until the worker is stopped: it must be scheduled to take
the stop (median 15-190 µs for a sleeping worker, 0.2 ms for a busy one, up
to tens of ms on a loaded host: docs/protocol.md).

Left open: a worker that does not stop within STOP_WAIT_S (in uninterruptible
sleep: a hung disk, NFS) is judged by its slot without being stopped; and a
worker already stopped by someone else (a debugger) is judged and left stopped.
"""

from __future__ import annotations

import mmap
import os
import signal
import time
from collections.abc import Collection

from dmp.node.slot import read_slot

# How long to wait for a worker to stop before judging it by its slot as it is.
STOP_WAIT_S = 1.0


def kill_if_running(pid: int, slot: mmap.mmap, spare: Collection[int], signum: int = signal.SIGKILL) -> int | None:
    """Send ``signum`` to worker ``pid`` unless the task in its ``slot`` is one of ``spare``.

    Returns None if it was signalled (or is gone already: its reaping follows),
    else the task key its slot shows, the worker left running.
    """
    keys = set(spare)
    try:
        stopped_before = is_stopped(pid)
        if not stopped_before:
            os.kill(pid, signal.SIGSTOP)
            _wait_stopped(pid)
        running = read_slot(slot)
        if running not in keys:
            os.kill(pid, signum)
            if signum != signal.SIGKILL and not stopped_before:
                os.kill(pid, signal.SIGCONT)  # a catchable signal reaches it once it runs again
            return None
        if not stopped_before:
            os.kill(pid, signal.SIGCONT)
        return running
    except ProcessLookupError:
        return None


def is_stopped(pid: int) -> bool:
    """True if the process is stopped by a signal or traced (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("T", "t")


def _wait_stopped(pid: int) -> bool:
    """Wait (at most STOP_WAIT_S) until child ``pid`` is stopped, or has ended; whether it has.

    ``waitid`` with WNOWAIT only looks: the stop (or the exit) stays for the
    owner's own wait (multiprocessing's, which never asks for stops)."""
    deadline = time.monotonic() + STOP_WAIT_S
    pause = 0.00005
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WSTOPPED | os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
        except ChildProcessError:  # not our child (nor a zombie of ours): only /proc can say
            if is_stopped(pid):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.005)
