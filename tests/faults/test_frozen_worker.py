"""One worker process frozen (SIGSTOP) while its node stays alive: killed, its tasks rerun."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

import dmp

from .harness import FaultCluster

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
            time.sleep(0.5)
            os.kill(victim, signal.SIGSTOP)  # the node keeps heartbeating; the worker holds its tasks
            started = time.monotonic()
            assert result.get(60) == [x * x for x in range(200)]
            assert time.monotonic() - started < 30
        # The frozen worker was killed (not merely left stopped) and replaced.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and os.path.exists(f"/proc/{victim}"):
            time.sleep(0.1)
        assert not os.path.exists(f"/proc/{victim}") or open(f"/proc/{victim}/stat").read().split()[2] == "Z"
        cluster.wait_slots(2)
    finally:
        try:
            os.kill(victim, signal.SIGCONT)
        except (ProcessLookupError, UnboundLocalError):
            pass
        cluster.stop()
