"""A job whose tasks have not finished yet probes on a few workers, and the manager's beat
spreads it over the idle ones once the probe time has passed (dmp_server.placement):
long tasks are never left queued at the manager while a worker idles for good."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from dmp_server import placement

import dmp
from tests.daemons import wait_for

pytestmark = pytest.mark.timeout(60)

WAIT_S = 30.0  # how long the first task waits for the second to start (never, if it is stuck)


def meet(arg: tuple[int, str]) -> bool:
    """Task 0 waits for task 1 to have started (a file it writes); True if it did."""
    i, marker = arg
    if i == 1:
        Path(marker).write_text(str(os.getpid()))
        return True
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if os.path.exists(marker):
            return True
        time.sleep(0.01)
    return False


def test_the_managers_beat_spreads_a_job_past_its_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A probe of one worker: task 1 waits at the manager while task 0 runs, until the
    # probe time passes and the next beat gives it to the other, idle, worker.
    monkeypatch.setattr(placement, "PROBE_WORKERS", 1)
    monkeypatch.setattr(placement, "PROBE_S", 0.05)
    marker = str(tmp_path / "second-started")
    with dmp.Pool(2) as pool:
        # Both workers joined first: a job submitted to one worker alone is its whole share.
        scheduler = pool._engine.daemon.scheduler
        wait_for(lambda: len(scheduler.workers) == 2, 30, "both local workers to join")
        assert pool.map(meet, [(0, marker), (1, marker)], chunksize=1) == [True, True]
