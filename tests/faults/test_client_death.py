"""A client SIGKILLed mid-map: its queued tasks never run, its running ones are
cancelled on the nodes, and other clients see nothing.

The manager notices a dead client by its silence (no heartbeat for five
seconds; a SIGKILLed process says no Bye), then drops its jobs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import dmp

from . import tasks
from .harness import LOSS_BOUND_S, ROOT, DeliveryCounter, FaultCluster, alive, wait_for

TASK_S = 6.0

CLIENT = """
    import sys, threading, time
    sys.path[:0] = [{root!r}, {server!r}]
    import cloudpickle
    import dmp
    from tests.faults import tasks
    cloudpickle.register_pickle_by_value(tasks)
    pool = dmp.Pool(address={address!r})
    if {threads!r} == 0:  # a map: everything submitted at once, most of it queued in the manager
        pool.map_async(tasks.sleep_logged, [(i, {markers!r}, {task_s!r}) for i in range(40)], chunksize=1)
    for t in range({threads!r}):  # or a few threads doing one apply at a time
        threading.Thread(target=lambda t=t: [pool.apply(tasks.sleep_logged, ((100 * t + i, {markers!r}, {task_s!r}),))
                                             for i in range(100)], daemon=True).start()
    time.sleep(600)
"""


def _attempts(markers: Path) -> dict[int, list[tuple[int, str]]]:
    return {int(p.name[4:]): tasks.attempts(str(markers), int(p.name[4:])) for p in markers.glob("run-*")}


def _start_client(cluster: FaultCluster, markers: Path, tmp_path: Path, threads: int) -> subprocess.Popen[bytes]:
    """A client process mapping 40 long tasks (``threads`` 0), or running ``threads`` applies at a time."""
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(CLIENT.format(
        root=str(ROOT), server=str(ROOT / "server"), address=cluster.address, markers=str(markers),
        task_s=TASK_S, threads=threads,
    )))
    return subprocess.Popen([sys.executable, str(script)], env=cluster.env, cwd=ROOT, stdin=subprocess.DEVNULL)


def _kill_client_mid_map(cluster: FaultCluster, markers: Path, tmp_path: Path) -> tuple[dict[int, list[tuple[int, str]]], float]:
    """Start a client whose 40 long tasks fill all four slots; SIGKILL it; wait till the manager drops it."""
    client = _start_client(cluster, markers, tmp_path, 0)
    try:
        wait_for(lambda: len(_attempts(markers)) >= 4, 30, "the client's tasks to fill the slots")
        status = cluster.status()
        assert status is not None and status["queued"] >= 30 and len(status["clients"]) == 1, status
    finally:
        client.kill()
        client.wait(10)
    t_kill = time.monotonic()
    started = _attempts(markers)

    def dropped() -> bool:
        status = cluster.status()
        return status is not None and status["clients"] == [] and status["queued"] == 0

    wait_for(dropped, LOSS_BOUND_S, "the manager to drop the dead client and its queue")
    return started, time.monotonic() - t_kill


@pytest.mark.timeout(90)
def test_dead_clients_queued_tasks_never_run(cluster: FaultCluster, markers: Path, tmp_path: Path) -> None:
    """Neither the tasks queued in the manager nor those already handed to a worker
    behind the running one (prefetch) start after the client is dropped."""
    started, _ = _kill_client_mid_map(cluster, markers, tmp_path)
    assert len(started) <= 8  # four running, at most four prefetched behind them
    # Every slot is free again and runs another client's tasks: a task of the dead
    # client prefetched behind a running one would have started before these.
    def all_free() -> bool:
        status = cluster.wait_slots(4)
        return status["busy"] == 0 and len(status["nodes"]) == 2 and all(n["slots"] == 2 and n["busy"] == 0 for n in status["nodes"])

    wait_for(all_free, 60, "every slot of both nodes to be free")
    with dmp.Pool(address=cluster.address) as other:
        values = other.map_async(tasks.where_slow, range(40), chunksize=1).get(60)
    assert {node for _, node, _ in values} == {"node1", "node2"}
    assert _attempts(markers) == started, "a task of the dead client started after it died"


@pytest.mark.timeout(90)
def test_dead_clients_running_tasks_are_cancelled_and_others_are_unaffected(
    cluster: FaultCluster, markers: Path, tmp_path: Path
) -> None:
    started, _ = _kill_client_mid_map(cluster, markers, tmp_path)
    running = {runs[0][0] for runs in started.values()}
    wait_for(lambda: not any(alive(pid) for pid in running), 30, f"the dead client's workers {running} to be killed")
    cluster.wait_slots(4)
    with dmp.Pool(address=cluster.address) as other:
        values = other.map_async(tasks.where_slow, range(40), chunksize=1).get(60)
    assert [v for v, _, _ in values] == [x * x for x in range(40)]
    assert {node for _, node, _ in values} == {"node1", "node2"}


@pytest.mark.timeout(90)
def test_another_clients_map_is_unaffected_by_a_client_dying_beside_it(
    cluster: FaultCluster, markers: Path, tmp_path: Path
) -> None:
    """The dead client holds two slots (two threads, one apply each) while the survivor
    maps over the other two; the survivor's results are exact across the death.
    (``Pool(processes=2)`` would not do: it caps nothing in cluster mode today, see below.)"""
    dead = markers / "dead"
    dead.mkdir()
    client = _start_client(cluster, dead, tmp_path, 2)
    try:
        wait_for(lambda: len(_attempts(dead)) >= 2, 30, "the doomed client's tasks to start")
        with dmp.Pool(address=cluster.address) as other:
            counter = DeliveryCounter(other)
            result = other.map_async(tasks.sleep_logged, [(i, str(markers), 0.06) for i in range(200)], chunksize=1)
            wait_for(lambda: len(list(markers.glob("run-*"))) >= 10, 20, "the survivor's map to start")
            client.kill()
            client.wait(10)
            values = result.get(60)
            # The dead client goes when its silence is noticed (five seconds), which may come
            # after the survivor's map is done: its tasks may have ended and freed their slots.
            wait_for(lambda: _clients(cluster) <= 1, LOSS_BOUND_S, "the dead client to be dropped")
    finally:
        client.kill()
        client.wait(10)
    assert [v for v, _, _ in values] == [i * i for i in range(200)]
    assert sorted(counter.counts.values()) == [1] * 200


def _clients(cluster: FaultCluster) -> int:
    """Clients the manager knows (the survivor, or nobody, once the dead one is dropped)."""
    status = cluster.status()
    return len(status["clients"]) if status is not None else 99


@pytest.mark.timeout(60)
def test_processes_caps_a_cluster_pools_tasks_in_flight(cluster: FaultCluster, markers: Path) -> None:
    with dmp.Pool(address=cluster.address, processes=2) as pool:
        result = pool.map_async(tasks.sleep_logged, [(i, str(markers), 0.5) for i in range(16)], chunksize=1)
        wait_for(lambda: len(list(markers.glob("run-*"))) >= 2, 20, "tasks to start")
        status = cluster.status()
        result.get(30)
    assert status is not None
    client = status["clients"][0]
    # Pool(k) in a cluster runs the pool's tasks on at most k workers at once
    # (k-way parallel, as k local processes); each of those may hold a task
    # prefetched behind the running one.
    assert client["max_workers"] == 2 and 1 <= client["workers"] <= 2, status
