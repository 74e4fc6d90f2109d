"""One worker process frozen (SIGSTOP) while its node stays alive: killed, its tasks rerun."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

import dmp

from .harness import FaultCluster, alive, wait_for

pytestmark = pytest.mark.timeout(120)


def slow_square(x: int) -> int:
    time.sleep(0.05)
    return x * x


def test_a_frozen_worker_is_killed_and_its_tasks_rerun(tmp_path: Path) -> None:
    cluster = FaultCluster(tmp_path / "logs")
    try:
        cluster.start(nodes=1, processes=2)
        victim = cluster.wait_workers("node1")[0]
        with dmp.Pool(address=cluster.address, modules=[sys.modules[__name__]]) as pool:
            result = pool.map_async(slow_square, range(200), chunksize=1)
            # Both slots busy: the victim holds a task when it freezes.
            wait_for(lambda: (s := cluster.status()) is not None and s["busy"] >= 2, 60, "both workers busy")
            os.kill(victim, signal.SIGSTOP)  # the node keeps heartbeating; the worker holds its tasks
            assert result.get(90) == [x * x for x in range(200)]
        # The frozen worker was killed (not merely left stopped) and replaced.
        wait_for(lambda: not alive(victim), 30, f"frozen worker {victim} to be killed")
        cluster.wait_slots(2)
        # The node says why it died; so does the manager's "last worker lost".
        log = (tmp_path / "logs" / "node1.log").read_text()
        assert f"worker pid {victim} was stopped (SIGSTOP or a debugger) for too long and killed by its node" in log
        status = cluster.status()
        assert status is not None and f"pid {victim} on node 'node1' was stopped" in status["totals"]["last_worker_lost"]
    finally:
        try:
            os.kill(victim, signal.SIGCONT)
        except (ProcessLookupError, UnboundLocalError):
            pass
        cluster.stop()
