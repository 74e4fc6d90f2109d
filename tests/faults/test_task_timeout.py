"""Per-task timeouts (``task_timeout``), local and cluster: a task stuck in C
(``time.sleep``, ``signal.pause()``) fails alone with TaskTimeoutError naming
task, node and pid; its worker is killed and replaced; it is not retried; the
other tasks of the same map succeed and the pool stays usable.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

import dmp

from . import limit_tasks, tasks
from .harness import FaultCluster, alive, wait_for

MODES = ["local", "cluster"]
TIMEOUT = 1.0


def _outcomes(it: Any, n: int) -> list[Any]:
    """Every item of an imap, an exception standing in its place."""
    out: list[Any] = []
    for _ in range(n):
        try:
            out.append(it.next(60))
        except dmp.TimeoutError as exc:
            if not isinstance(exc, dmp.TaskTimeoutError):
                raise  # next() itself gave up: a hang, not the task's timeout
            out.append(exc)
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
def test_stuck_tasks_fail_alone_and_the_pool_stays_usable(make_pool: Any, mode: str, markers: Path) -> None:
    pool = make_pool(mode, task_timeout=TIMEOUT)
    hows = ["quick", "sleep", "quick", "pause", "quick", "quick"]
    args = [(str(markers), i, how) for i, how in enumerate(hows)]
    got = _outcomes(pool.imap(limit_tasks.star_stuck, args, chunksize=1), len(hows))
    for i, how in enumerate(hows):
        if how == "quick":
            assert got[i][0] == i
            continue
        exc = got[i]
        assert isinstance(exc, dmp.TaskTimeoutError) and isinstance(exc, dmp.TimeoutError), repr(exc)
        text = str(exc)
        assert f"task {i} " in text and "task_timeout of 1 s" in text, text
        assert f"pid {exc.pid}" in text and f"node {exc.node!r}" in text, text
        assert exc.timeout == TIMEOUT
        if mode == "cluster":
            assert exc.node in ("node1", "node2")
        # Killed, and run exactly once: a timed-out task is never retried.
        wait_for(lambda pid=exc.pid: not alive(pid), 10, f"the stuck worker pid {exc.pid} to die")
        assert [pid for pid, _node in tasks.attempts(str(markers), i)] == [exc.pid]
    # The pool is whole: its workers were replaced and run new work.
    assert pool.map(tasks.square, range(20), chunksize=1) == [x * x for x in range(20)]
    assert pool.apply(tasks.square, (7,)) == 49


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
def test_apply_async_times_out_and_tasks_within_the_limit_do_not(make_pool: Any, mode: str, markers: Path) -> None:
    pool = make_pool(mode, task_timeout=TIMEOUT)
    stuck = pool.apply_async(limit_tasks.stuck_or_quick, (str(markers), 0, "pause"))
    quick = [pool.apply_async(limit_tasks.stuck_or_quick, (str(markers), i, "quick")) for i in range(1, 5)]
    with pytest.raises(dmp.TaskTimeoutError, match="ran past its task_timeout"):
        stuck.get(60)
    assert [r.get(60)[0] for r in quick] == [1, 2, 3, 4]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
def test_executor_task_timeout(mode: str, markers: Path, request: pytest.FixtureRequest) -> None:
    kw: dict[str, Any] = {}
    if mode == "cluster":
        cluster: FaultCluster = request.getfixturevalue("shared_cluster")
        cluster.wait_slots(4)
        kw["address"] = cluster.address
    with dmp.Executor(2, task_timeout=TIMEOUT, **kw) as ex:
        stuck = ex.submit(limit_tasks.stuck_or_quick, str(markers), 0, "sleep")
        with pytest.raises(dmp.TaskTimeoutError):
            stuck.result(60)
        assert ex.submit(tasks.square, 5).result(60) == 25


@pytest.mark.timeout(120)
def test_the_node_keeps_the_deadline_while_the_manager_is_frozen(cluster: FaultCluster, markers: Path) -> None:
    """The deadline is kept where the task runs: with the manager stopped
    (SIGSTOP), the node still kills the stuck worker; once the manager runs
    again the task fails with TaskTimeoutError."""
    assert cluster.manager is not None
    with dmp.Pool(address=cluster.address, task_timeout=0.5) as pool:
        stuck = pool.apply_async(limit_tasks.stuck_or_quick, (str(markers), 0, "pause"))
        (pid, _node), = wait_for(lambda: tasks.attempts(str(markers), 0), 30, "the stuck task to start")
        cluster.manager.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: not alive(pid), 30, f"the node to kill worker pid {pid} on its own")
        finally:
            cluster.manager.send_signal(signal.SIGCONT)
        with pytest.raises(dmp.TaskTimeoutError) as info:
            stuck.get(60)
        assert info.value.pid == pid
        assert pool.apply(tasks.square, (4,)) == 16


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "1", True])
def test_a_bad_task_timeout_is_refused_clearly(bad: Any) -> None:
    with pytest.raises(ValueError, match="task_timeout"):
        dmp.Pool(1, task_timeout=bad)
