"""Fault-injection helpers on top of tests/daemons.py: loss bounds, delivery counting, an OOM killer.

The daemons themselves (start, kill, freeze, restart, sweep by PID and process
group) are tests/daemons.py's ``Daemons``, exported here as ``FaultCluster``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from dmp.wire import protocol
from tests.daemons import ROOT, Daemons, alive, base_env, children, wait_for

__all__ = [
    "LOSS_BOUND_S", "ROOT", "DeliveryCounter", "FaultCluster", "OomKiller", "alive", "base_env", "children",
    "peak_rss_kib", "wait_for",
]

# The manager declares a peer gone after LIVENESS (4) silent heartbeats,
# checked once per heartbeat: at most 5 s after its last beat by default
# (measured 4.8-4.9 s on an idle machine). The tests allow four times that:
# "within seconds", not "never" (nor a TCP timeout of minutes), even on a
# shared 2-core machine where the daemons and the tests' own status polling
# wait for the CPU.
LOSS_BOUND_S = 20.0
FaultCluster = Daemons


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set) of ``pid`` in KiB, 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class DeliveryCounter:
    """Counts every task outcome the manager delivers to a pool, at the wire.

    Wraps the session's ``on_message`` so a result delivered twice is seen even
    when the result object would hide it (a finished job's sink is gone).
    """

    def __init__(self, pool: Any) -> None:
        self.counts: Counter[tuple[int, int]] = Counter()
        session = pool._session
        inner = session.on_message

        def on_message(msg: protocol.Message, frames: list[Any]) -> None:
            if isinstance(msg, protocol.JobResults):
                for job, task_id, status, *_ in msg.items:
                    if status != protocol.Status.CANCELLED:
                        self.counts[(job, task_id)] += 1
            inner(msg, frames)

        session.on_message = on_message

    def doubled(self) -> dict[tuple[int, int], int]:
        return {k: n for k, n in self.counts.items() if n > 1}


class OomKiller:
    """A stand-in for the kernel's OOM killer: SIGKILLs a registered pid past ``limit_mib`` resident.

    Tasks that mean to be OOM-killed write their pid into ``dir/oom-PID``
    and then allocate; this thread polls their VmRSS and kills them with
    SIGKILL, as the kernel (or a cgroup's memory limit) does.
    """

    def __init__(self, directory: Path, limit_mib: int = 200) -> None:
        self.dir = directory
        self.limit_kib = limit_mib * 1024
        self.killed: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oom-killer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            for path in self.dir.glob("oom-*"):
                pid = int(path.name.split("-", 1)[1])
                rss = 0
                try:
                    with open(f"/proc/{pid}/status") as fh:
                        rss = next((int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:")), 0)
                except OSError:
                    pass
                if rss > self.limit_kib:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        self.killed.append(pid)
                    path.unlink(missing_ok=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
