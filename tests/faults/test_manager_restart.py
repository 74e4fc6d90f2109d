"""The manager restarts: nodes rejoin by themselves, in-flight work fails fast, new pools work.

A client hears the manager's heartbeat every second; five silent ones (or the
manager's Bye on a clean shutdown) fail every waiting result with
``ManagerUnavailableError``. Nothing in flight is carried over: the new
manager knows no jobs, so the client must submit again.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

import dmp

from . import tasks
from .harness import LOSS_BOUND_S, FaultCluster, wait_for


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("sig", "bound"), [(signal.SIGKILL, LOSS_BOUND_S), (signal.SIGTERM, LOSS_BOUND_S / 2)])
def test_manager_restart_fails_in_flight_work_fast_and_nodes_rejoin(
    cluster: FaultCluster, markers: Path, sig: int, bound: float
) -> None:
    pool = dmp.Pool(address=cluster.address)
    try:
        mapped = pool.map_async(tasks.sleep_logged, [(i, str(markers), 1.0) for i in range(20)], chunksize=1)
        applied = pool.apply_async(tasks.sleep_logged, ((99, str(markers), 1.0),))
        it = pool.imap_unordered(tasks.sleep_logged, [(100 + i, str(markers), 1.0) for i in range(8)])
        wait_for(lambda: len(list(markers.glob("run-*"))) >= 4, 20, "tasks to start")
        cluster.kill_manager(sig)
        t0 = time.monotonic()
        for res in (mapped, applied):
            with pytest.raises(dmp.ManagerUnavailableError):
                res.get(bound + 5)
        with pytest.raises(dmp.ManagerUnavailableError):
            list(it)
        failed_after = time.monotonic() - t0
        # The broken pool says so instead of hanging (a hang is caught by the test's timeout).
        with pytest.raises(dmp.ManagerUnavailableError):
            pool.map(tasks.square, range(3))
    finally:
        pool.terminate()
    cluster.start_manager()
    t2 = time.monotonic()
    cluster.wait_slots(4)  # nobody touched the nodes
    rejoined_after = time.monotonic() - t2
    with dmp.Pool(address=cluster.address) as fresh:
        values = fresh.map(tasks.where_slow, range(60), chunksize=1)
    assert [v for v, _, _ in values] == [x * x for x in range(60)]
    assert {node for _, node, _ in values} == {"node1", "node2"}
    print(f"{signal.Signals(sig).name}: in-flight work failed after {failed_after:.1f} s; "
          f"nodes rejoined {rejoined_after:.1f} s after the restart")
