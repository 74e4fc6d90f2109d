"""A worker node vanishes: killed, frozen (SIGSTOP), or cut off the network.

The manager hears a heartbeat from each node every second and declares a node
lost after more than four silent ones (``LIVENESS * HEARTBEAT_S``; checked
once a second, so 4 to 5 s after its last heartbeat). Its workers' tasks then rerun on
the other node; a late result from the lost incarnation is dropped, never
delivered twice; a node that comes back says Hello and serves again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import dmp

from . import tasks
from .harness import LOSS_BOUND_S, ROOT, DeliveryCounter, FaultCluster, alive, base_env, wait_for


def _started_on(markers: Path, node: str) -> int:
    n = 0
    for path in markers.glob("run-*"):
        n += sum(1 for line in path.read_text().splitlines() if line.endswith(f" {node}"))
    return n


def _reruns(markers: Path, n: int) -> dict[int, list[tuple[int, str]]]:
    out = {}
    for i in range(n):
        runs = tasks.attempts(str(markers), i)
        if len(runs) > 1:
            out[i] = runs
    return out


@pytest.mark.timeout(90)
def test_node_daemon_sigkilled_its_workers_die_with_it_and_tasks_rerun(cluster: FaultCluster, markers: Path) -> None:
    """Only the node daemon is killed: its workers get SIGKILL from the kernel at once
    (PR_SET_PDEATHSIG), so no orphan goes on working unsupervised; their tasks rerun
    on the other node once the node is declared lost."""
    n = 40
    with dmp.Pool(address=cluster.address) as pool:
        counter = DeliveryCounter(pool)
        result = pool.map_async(tasks.sleep_logged, [(i, str(markers), 0.5) for i in range(n)], chunksize=1)
        wait_for(lambda: _started_on(markers, "node1") >= 2, 20, "node1 to run tasks")
        orphans = cluster.signal_node("node1", signal.SIGKILL, workers=False)
        t_kill = time.monotonic()
        assert len(orphans) == 2
        wait_for(lambda: not any(alive(p) for p in orphans), 5, f"orphaned workers {orphans} to exit")
        orphan_exit_s = time.monotonic() - t_kill
        wait_for(lambda: "node1" not in cluster.node_names(), LOSS_BOUND_S, "node1 to be declared lost")
        values = result.get(60)
        assert [v for v, _, _ in values] == [i * i for i in range(n)]
        assert sorted(counter.counts.values()) == [1] * n, counter.doubled()
        reruns = _reruns(markers, n)
        assert reruns and all(runs[-1][1] == "node2" for runs in reruns.values()), reruns
        cluster.start_node("node1")
        cluster.wait_slots(4)
        again = pool.map(tasks.where_slow, range(40), chunksize=1)
    assert [v for v, _, _ in again] == [x * x for x in range(40)]
    assert {node for _, node, _ in again} == {"node1", "node2"}
    print(f"orphaned workers exited {orphan_exit_s:.2f} s after their node was SIGKILLed")


@pytest.mark.timeout(90)
def test_host_crash_node_and_workers_sigkilled_tasks_rerun_on_the_other_node(
    cluster: FaultCluster, markers: Path
) -> None:
    n = 40
    with dmp.Pool(address=cluster.address) as pool:
        counter = DeliveryCounter(pool)
        t0 = time.monotonic()
        result = pool.map_async(tasks.sleep_logged, [(i, str(markers), 0.5) for i in range(n)], chunksize=1)
        wait_for(lambda: _started_on(markers, "node1") >= 2, 20, "node1 to run tasks")
        cluster.signal_node("node1", signal.SIGKILL, workers=True)
        t_kill = time.monotonic()
        wait_for(lambda: "node1" not in cluster.node_names(), LOSS_BOUND_S, "node1 to be declared lost")
        lost_after = time.monotonic() - t_kill
        values = result.get(60)
        elapsed = time.monotonic() - t0
        assert [v for v, _, _ in values] == [i * i for i in range(n)]
        assert all(node == "node2" for _, node, _ in values[-10:])
        assert not counter.doubled() and len(counter.counts) == n
        reruns = _reruns(markers, n)
        assert reruns and all(runs[0][1] == "node1" and runs[-1][1] == "node2" for runs in reruns.values()), reruns
        cluster.start_node("node1")
        cluster.wait_slots(4)
        again = pool.map(tasks.where, range(40), chunksize=1)
    assert [v for v, _, _ in again] == [x * x for x in range(40)]
    print(f"node declared lost {lost_after:.1f} s after SIGKILL; map done in {elapsed:.1f} s")


@pytest.mark.timeout(120)
def test_frozen_node_is_lost_then_rejoins_and_its_late_results_are_dropped(
    cluster: FaultCluster, markers: Path
) -> None:
    n = 40
    with dmp.Pool(address=cluster.address) as pool:
        counter = DeliveryCounter(pool)
        result = pool.map_async(tasks.sleep_logged, [(i, str(markers), 0.5) for i in range(n)], chunksize=1)
        wait_for(lambda: _started_on(markers, "node1") >= 2, 20, "node1 to run tasks")
        frozen = cluster.signal_node("node1", signal.SIGSTOP, workers=True)
        t_stop = time.monotonic()
        try:
            wait_for(lambda: "node1" not in cluster.node_names(), LOSS_BOUND_S, "the frozen node to be declared lost")
            lost_after = time.monotonic() - t_stop
            values = result.get(60)
            reruns = _reruns(markers, n)  # before the thaw: the frozen node ran nothing since
        finally:
            for pid in [cluster.nodes["node1"].pid, *frozen]:
                os.kill(pid, signal.SIGCONT)
        assert [v for v, _, _ in values] == [i * i for i in range(n)]
        assert reruns and all(runs[0][1] == "node1" and runs[-1][1] == "node2" for runs in reruns.values()), reruns
        # Thawed: the node and its workers say Hello again; the results they
        # computed for the lost incarnation arrive late and must be dropped.
        wait_for(lambda: cluster.node_slots("node1") == 2, 60, "the thawed node to rejoin")
        # The thawed workers send any late results before the new map's: once that
        # map is back, whatever the lost incarnation sent has arrived (and been dropped).
        again = pool.map(tasks.sleep_logged, [(1000 + i, str(markers), 0.05) for i in range(40)], chunksize=1)
        assert sorted(counter.counts.values()) == [1] * (n + 40), counter.doubled()
    assert [v for v, _, _ in again] == [(1000 + i) ** 2 for i in range(40)]
    assert {node for _, node, _ in again} == {"node1", "node2"}  # the thawed node serves again
    print(f"frozen node declared lost after {lost_after:.1f} s; reruns: {sorted(reruns)}")


# --- network cut (Linux network namespaces; root) ----------------------------------------------

CLIENT = """
    import json, os, sys, time
    sys.path[:0] = [{root!r}, {server!r}]
    import cloudpickle
    import dmp
    from tests.faults import tasks
    from tests.faults.harness import DeliveryCounter
    cloudpickle.register_pickle_by_value(tasks)
    markers, go = sys.argv[1], sys.argv[2]
    n = 40
    with dmp.Pool(address=os.environ["FAULT_ADDRESS"]) as pool:
        counter = DeliveryCounter(pool)
        t0 = time.monotonic()
        values = pool.map(tasks.sleep_logged, [(i, markers, 0.5) for i in range(n)], chunksize=1)
        print(json.dumps({{"phase": 1, "values": [v for v, _, _ in values], "elapsed": time.monotonic() - t0,
                          "doubled": len(counter.doubled())}}), flush=True)
        while not os.path.exists(go):
            time.sleep(0.1)
        # Late results of the cut-off incarnation come before the next map's on the same sockets.
        again = pool.map(tasks.sleep_logged, [(1000 + i, markers, 0.05) for i in range(40)], chunksize=1)
        print(json.dumps({{"phase": 2, "counts": sorted(counter.counts.values()), "n": n + 40,
                          "again": [v for v, _, _ in again], "nodes": sorted({{w for _, w, _ in again}})}}),
              flush=True)
"""


@pytest.mark.netns
@pytest.mark.timeout(150)
def test_network_cut_node_is_lost_then_rejoins_and_nothing_is_doubled(tmp_path: Path, markers: Path) -> None:
    from tests.cluster.netns import make_topology

    topo = make_topology(["mgr", "nodeA", "nodeB"])
    logs: dict[str, Any] = {}
    try:
        key = f"faults-{os.getpid()}-{time.time_ns()}"
        keyfile = tmp_path / "authkey"
        keyfile.write_text(key)
        keyfile.chmod(0o600)
        address = f"tcp://{topo.ip('mgr')}:5555"
        env = base_env()

        def spawn(host: str, argv: list[str], extra: dict[str, str] | None = None) -> subprocess.Popen[Any]:
            logs[host] = open(tmp_path / f"{host}.log", "ab")
            return topo.spawn(host, [sys.executable, *argv], env=dict(env, **(extra or {})), cwd=ROOT,
                              stdout=logs[host], stderr=subprocess.STDOUT)

        def status() -> dict[str, int]:
            out = topo.run("mgr", [sys.executable, "-m", "dmp", "status", address, "--json",
                                   "--authkey-file", str(keyfile), "--timeout", "2"], env, timeout=20)
            if out.returncode != 0:
                return {}
            return {n["name"]: n["slots"] for n in json.loads(out.stdout)["nodes"]}

        spawn("mgr", ["-m", "dmp", "manager", "--bind", address, "--authkey-file", str(keyfile)])
        for host in ("nodeA", "nodeB"):
            spawn(host, ["-m", "dmp", "worker", address, "--processes", "2", "--name", host,
                         "--authkey-file", str(keyfile)], {"FAULT_NODE": host})
        wait_for(lambda: status() == {"nodeA": 2, "nodeB": 2}, 30, "both nodes to join", every=0.2)

        script = tmp_path / "client.py"
        script.write_text(textwrap.dedent(CLIENT.format(root=str(ROOT), server=str(ROOT / "server"))))
        go = tmp_path / "go"
        client = topo.spawn("mgr", [sys.executable, str(script), str(markers), str(go)],
                            env=dict(env, DMP_AUTHKEY=key, FAULT_ADDRESS=address),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: _started_on(markers, "nodeA") >= 2, 30, "nodeA to run tasks")
        topo.link_down("nodeA")
        t_cut = time.monotonic()
        wait_for(lambda: "nodeA" not in status(), LOSS_BOUND_S + 3, "the cut-off node to be declared lost",
                 every=0.2)
        lost_after = time.monotonic() - t_cut
        assert client.stdout is not None
        phase1 = json.loads(client.stdout.readline() or "{}")
        assert phase1.get("values") == [i * i for i in range(40)], (phase1, client.stderr)
        assert phase1["doubled"] == 0
        reruns = _reruns(markers, 40)
        # (a cut-off worker is not frozen: it may run what it held, too, results dropped)
        assert reruns and all(any(node == "nodeB" for _, node in runs) for runs in reruns.values()), reruns
        topo.link_up("nodeA")
        wait_for(lambda: status().get("nodeA") == 2, 60, "nodeA to rejoin after the cut", every=0.5)
        go.touch()
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        phase2 = json.loads(out.splitlines()[-1])
        assert phase2["counts"] == [1] * phase2["n"], phase2  # nothing delivered twice
        assert phase2["again"] == [(1000 + i) ** 2 for i in range(40)]
        assert phase2["nodes"] == ["nodeA", "nodeB"]
        print(f"cut-off node declared lost after {lost_after:.1f} s (status polls cost ~0.5 s each)")
    finally:
        topo.close()
        for fh in logs.values():
            fh.close()


# Run as the node: after the node's first worker, each process it forks stops
# itself at once, before worker_main, so the test can kill the node there.
_STOP_REPLACEMENTS = """
import os, signal, sys
forks = [0]
def child():
    if forks[0] > 1:
        os.kill(os.getpid(), signal.SIGSTOP)
os.register_at_fork(before=lambda: forks.__setitem__(0, forks[0] + 1), after_in_child=child)
from dmp.cli import main
sys.exit(main(sys.argv[4:]))
"""


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


@pytest.mark.timeout(90)
def test_worker_forked_as_its_node_is_killed_does_not_outlive_it(tmp_path: Path) -> None:
    """The node is SIGKILLed between forking a replacement and the replacement's
    PR_SET_PDEATHSIG (what srun's "forcing job termination" did in a Slurm job:
    the step's processes are killed one by one, the node replaces the worker
    killed first). The replacement was an orphan serving forever; it exits."""
    cluster = FaultCluster(tmp_path / "daemons")
    try:
        cluster.start_manager()
        node = cluster.start_node("node1", 1, wrap=(sys.executable, "-c", _STOP_REPLACEMENTS))
        cluster.wait_slots(1)
        [first] = cluster.wait_workers("node1")
        os.kill(first, signal.SIGKILL)
        replacement = wait_for(
            lambda: next((p for p in cluster.worker_pids("node1") if p != first and _stopped(p)), None),
            30, "the node to fork a replacement",
        )
        node.kill()
        node.wait(10)
        os.kill(replacement, signal.SIGCONT)  # an orphan now, before worker_main asked to die with its node
        wait_for(lambda: not alive(replacement), 20, f"the orphaned replacement {replacement} to exit")
    finally:
        cluster.stop()
