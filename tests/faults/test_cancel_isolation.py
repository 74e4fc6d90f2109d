"""Cancelling one client's work never kills another client's running task.

One worker runs client A's long task; client B's task is handed to that same
worker behind it (prefetch). B ends (``Pool.terminate``: the manager cancels its
jobs, as for a client that died). The manager must not kill the worker: A's
task completes on its first attempt, in the same process, and B's task,
withdrawn from the worker's queue (ForgetJobs), never starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import dmp
from tests.daemons import start_cluster

from . import tasks
from .harness import LOSS_BOUND_S, alive, wait_for

A_TASK_S = 3.0


@pytest.mark.timeout(120)
def test_terminating_a_pool_leaves_another_clients_running_task_alone(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    cluster = start_cluster(tmp_path / "daemons", nodes=1, processes=1)
    try:
        (worker_pid,) = cluster.wait_workers("node1")
        with dmp.Pool(address=cluster.address) as a:
            b = dmp.Pool(address=cluster.address)
            try:
                ra = a.apply_async(tasks.sleep_logged, ((0, str(markers), A_TASK_S),))
                wait_for(lambda: tasks.attempts(str(markers), 0), 30, "A's task to start")
                rb = b.apply_async(tasks.sleep_logged, ((1, str(markers), 0.0),))

                def b_on_the_worker() -> bool:
                    # B's task left the manager's queue: it waits on the only worker, behind A's.
                    status = cluster.status()
                    return status is not None and len(status["clients"]) == 2 and status["queued"] == 0

                wait_for(b_on_the_worker, 30, "B's task to be handed to the busy worker")
                assert not rb.ready() and not ra.ready()
            finally:
                b.terminate()
            b.join()

            def b_dropped() -> bool:
                status = cluster.status()
                return status is not None and len(status["clients"]) == 1

            wait_for(b_dropped, LOSS_BOUND_S, "the manager to drop the terminated client")
            value, _node, pid = ra.get(60)
            assert value == 0 and pid == worker_pid and alive(worker_pid)
            assert tasks.attempts(str(markers), 0) == [(worker_pid, "node1")], "A's task was retried"
            # The worker runs its queue in order: had B's task stayed there, it
            # would have started before this one.
            assert a.apply(tasks.where, (3,)) == (9, "node1", worker_pid)
        assert tasks.attempts(str(markers), 1) == [], "B's withdrawn task started"
    finally:
        cluster.stop()
