"""Cancelling a job whose task a worker has finished, its result still batched there,
spares the worker now running another job's task (local mode, and a cluster node).

One worker. Task X holds it while job A's one short task and then task B are
queued on it; X returns, A's task runs and its result stays in the worker's
batch (results go out when the worker's queue runs dry, or FLUSH_SECONDS after
the batch began: here an hour, so the hold does not depend on how fast the
machine is), and B starts. The manager, hearing nothing of A's task, takes it
for the running one. Cancelling A then used to kill the worker: B's run was
lost and B ran again in a fresh process. Now the kill names A's task, the
worker's slot says B's is running, and the worker is spared: B completes in
the same process, on its first attempt.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import dmp
from dmp.node import worker as worker_mod
from tests.daemons import Daemons

from . import tasks
from .harness import alive, wait_for

# X runs on this long once released, so that when it ends the worker reads every
# message waiting for it (dmp.node.worker.DRAIN_SECONDS: after a task of 5 ms or
# more), A's and B's Dispatch among them: a cluster worker's arrive through its
# ZeroMQ I/O thread, which gets this long to move them.
X_LINGER_S = 0.2


class _Short:
    """A wait's falsy answer that says what it saw (wait_for prints the last one)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return self.text


def _cancel(pool: dmp.Pool, result: Any) -> int:
    """Cancel the job of ``result`` (a map_async) as a client's CancelJob does; its job id."""
    session = pool._session  # type: ignore[attr-defined]
    (job,) = [j for j, sink in list(session.sinks.items()) if sink is result]
    session.cancel_job(job)
    return job


@pytest.mark.timeout(90)
def test_local_cancel_spares_a_worker_that_moved_on_to_another_jobs_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = str(tmp_path)
    monkeypatch.setattr(worker_mod, "FLUSH_SECONDS", 3600.0)  # inherited by the forked worker
    with dmp.Pool(1) as pool:
        engine = pool._engine  # type: ignore[attr-defined]
        sched = engine.daemon.scheduler
        (worker_pid,) = [p.pid for p in engine.processes]
        # Short tasks first: the manager then lets the worker hold X, A's task and B (X's
        # job, known by then: a task of it has finished) at once.
        pool.apply(tasks.square, (0,))
        while sched.in_flight < 3:
            pool.map(tasks.square, range(16), chunksize=1)
        rx = pool.apply_async(tasks.held, (d, 0, X_LINGER_S))
        wait_for(lambda: tasks.attempts(d, 0), 30, "X to start")
        ra = pool.map_async(tasks.square, [2])
        rb = pool.apply_async(tasks.held, (d, 1))

        def all_three_on_the_worker() -> bool:
            return [len(w.assigned) for w in list(sched.workers.values())] == [3]

        wait_for(all_three_on_the_worker, 30, "A's task and B to be handed to the busy worker")
        tasks.release(d, 0)
        assert rx.get(30)[0] == worker_pid
        wait_for(lambda: tasks.attempts(d, 1), 30, "B to start")
        assert not ra.ready(), "A's result was not held back: the scenario did not happen"
        job = _cancel(pool, ra)

        def cancel_carried_out() -> bool:
            # The job is gone, and no worker awaits a kill: spared, or (the old way) killed and reaped.
            gone = all(job not in c.jobs for c in list(sched.clients.values()))
            return gone and not any(w.doomed for w in list(sched.workers.values()))

        wait_for(cancel_carried_out, 30, "the manager to carry out the cancel")
        tasks.release(d, 1)
        assert rb.get(30) == (worker_pid, "local")
        assert tasks.attempts(d, 1) == [(worker_pid, "local")], "B was run again"
        assert [p.pid for p in engine.processes] == [worker_pid] and alive(worker_pid)
        assert sched.totals.workers_lost == 0
        # The spared worker takes work again.
        assert pool.apply(os.getpid) == worker_pid


@pytest.mark.timeout(90)
def test_local_cancel_still_kills_the_worker_running_the_jobs_task(tmp_path: Path) -> None:
    d = str(tmp_path)
    with dmp.Pool(1) as pool:
        engine = pool._engine  # type: ignore[attr-defined]
        (worker_pid,) = [p.pid for p in engine.processes]
        ra = pool.starmap_async(tasks.held, [(d, 0)])
        wait_for(lambda: tasks.attempts(d, 0), 30, "A's task to start")
        _cancel(pool, ra)
        wait_for(lambda: not alive(worker_pid), 30, "the worker running A's task to be killed")
        wait_for(lambda: [p.pid for p in engine.processes if p.pid != worker_pid], 30, "a replacement worker")
        assert pool.apply(os.getpid) != worker_pid
        assert tasks.attempts(d, 0) == [(worker_pid, "local")], "A's cancelled task ran again"


# Loaded at start-up by the node's interpreter (PYTHONPATH): its forked workers hold their results.
_HOLD_RESULTS = "import dmp.node.worker as w\nw.FLUSH_SECONDS = 3600.0\n"


@pytest.mark.timeout(120)
def test_cluster_cancel_spares_a_worker_that_moved_on_to_another_clients_task(tmp_path: Path) -> None:
    """As the local test, with two clients: A's pool is terminated (its jobs cancelled)."""
    d = tmp_path / "markers"
    d.mkdir()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_HOLD_RESULTS)
    cluster = Daemons(tmp_path / "daemons")
    try:
        cluster.start_manager()
        cluster.env = dict(cluster.env, PYTHONPATH=os.pathsep.join([str(hook), cluster.env["PYTHONPATH"]]))
        cluster.start_node("node1", 1)
        cluster.wait_slots(1)
        (worker_pid,) = cluster.wait_workers("node1")

        def on_workers(n: int) -> bool | _Short:
            status = cluster.status()
            if status is not None and status["queued"] == 0 and sum(c["running"] for c in status["clients"]) == n:
                return True
            if status is None:
                return False
            return _Short(f"{status['queued']} queued, running {[c['running'] for c in status['clients']]}")

        with dmp.Pool(address=cluster.address) as b:
            for _ in range(8):  # X's (and B's) job known short: the worker may hold three tasks
                b.apply(tasks.square, (0,))
            # An apply's result is one sample of the manager's mean run time: on a loaded host
            # one preempted square could leave the mean long enough to allow only two. A map's
            # results come in batches (one mean each), and bring it back down.
            for _ in range(3):
                b.map(tasks.square, range(100), chunksize=1)
            rx = b.apply_async(tasks.held, (str(d), 0, X_LINGER_S))
            wait_for(lambda: tasks.attempts(str(d), 0), 30, "X to start")
            a = dmp.Pool(address=cluster.address)
            try:
                ra = a.apply_async(tasks.square, (2,))
                wait_for(lambda: on_workers(2), 30, "A's task to be handed to the busy worker")
                rb = b.apply_async(tasks.held, (str(d), 1))
                wait_for(lambda: on_workers(3), 30, "B to be handed to the busy worker")
                tasks.release(str(d), 0)
                assert rx.get(30)[0] == worker_pid
                wait_for(lambda: tasks.attempts(str(d), 1), 30, "B to start")
                assert not ra.ready(), "A's result was not held back: the scenario did not happen"
            finally:
                a.terminate()
            a.join()
            log = cluster.logdir / "node1.log"

            def node_acted() -> bool:  # spared (logged), or (the old way) killed
                return "spared worker pid" in log.read_text(errors="replace") or not alive(worker_pid)

            wait_for(node_acted, 60, "the node to carry out the cancel's kill")
            tasks.release(str(d), 1)
            assert rb.get(60) == (worker_pid, "node1")
            assert tasks.attempts(str(d), 1) == [(worker_pid, "node1")], "B was run again"
            assert alive(worker_pid) and cluster.worker_pids("node1") == [worker_pid]
            assert b.apply(tasks.where, (3,)) == (9, "node1", worker_pid)
            status = cluster.status()
            assert status is not None and status["totals"]["workers_lost"] == 0
    finally:
        cluster.stop()
