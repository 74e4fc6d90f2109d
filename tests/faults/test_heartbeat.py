"""Every peer follows the manager's ``--heartbeat-s`` (sent in Welcome) with one LIVENESS count.

    long beat (10 s): idle for longer than the default liveness window, nothing is
        dropped: the object host, the node, its worker and the client all stay
    short beat (0.2 s): the object host is not dropped for beating too slowly, and
        a silenced (SIGSTOP) object host, worker, client or node is dropped within
        the short window, as a silenced manager is by its client

Real ``dmp manager`` and ``dmp worker`` daemons on loopback (FaultCluster), a
real managed dict. Bounds are the default liveness window: with a short beat
a silenced peer must go well before the default window would have passed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import dmp
from dmp import _config

from .harness import FaultCluster, alive, children, wait_for

pytestmark = pytest.mark.timeout(180)

DEFAULT_WINDOW_S = _config.HEARTBEAT_S * _config.LIVENESS
LONG_BEAT_S = 10.0
SHORT_BEAT_S = 0.2
# Before every peer followed the manager's beat, an idle object host gave up
# 5 to 6 s after it last heard the manager, which beats it every LONG_BEAT_S:
# staying idle this long would have seen it exit.
LONG_IDLE_S = LONG_BEAT_S + 7.0
# Several short windows: a peer beating at the default rate would be dropped.
SHORT_IDLE_S = 3.0


def hold(seconds: float, invariant: Callable[[], bool], what: str) -> None:
    """Stay idle for ``seconds``, failing at once if ``invariant`` stops holding."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert invariant(), what
        time.sleep(0.1)
    assert invariant(), what


def manager_log(cluster: FaultCluster) -> str:
    return (cluster.logdir / "manager.log").read_text(errors="replace")


def dropped_as_silent(cluster: FaultCluster) -> list[str]:
    """The manager's "went silent" lines, leaving out ``dmp status`` probes (they need not say Bye)."""
    return [line for line in manager_log(cluster).splitlines() if "went silent" in line and " status status " not in line]


def object_host(cluster: FaultCluster) -> int:
    """The pid of the manager's object host (its only child: nodes are ours)."""
    assert cluster.manager is not None
    manager = cluster.manager.pid
    pids: list[int] = wait_for(lambda: children(manager), 20, "the object host")
    return pids[0]


@contextlib.contextmanager
def beat_cluster(tmp: Path, beat: float, *, processes: int = 1) -> Iterator[FaultCluster]:
    cluster = FaultCluster(tmp / "daemons", manager_args=("--heartbeat-s", str(beat)))
    try:
        cluster.start(nodes=1, processes=processes)
        yield cluster
    except BaseException:
        sys.stderr.write(cluster.logs())
        raise
    finally:
        cluster.stop()


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[int]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_long_beat_nothing_is_dropped_while_idle(tmp_path: Path) -> None:
    with beat_cluster(tmp_path, LONG_BEAT_S) as cluster:
        node = cluster.nodes["node1"]
        worker = cluster.wait_workers("node1")[0]
        manager = dmp.Manager(address=cluster.address)
        try:
            shared = manager.dict()
            shared["k"] = 1
            host = object_host(cluster)
            with dmp.Pool(address=cluster.address) as pool:
                assert pool.apply(abs, (-3,)) == 3
                hold(
                    LONG_IDLE_S,
                    lambda: alive(host) and alive(worker) and node.poll() is None,
                    "a peer exited while idle under a long heartbeat",
                )
                # Client link, node, worker and object host are all still there.
                assert shared["k"] == 1
                assert pool.apply(abs, (-4,)) == 4
            assert children(cluster.manager.pid) == [host]  # type: ignore[union-attr]
            assert cluster.node_slots("node1") == 1
            assert cluster.worker_pids("node1") == [worker]
            assert dropped_as_silent(cluster) == []
        finally:
            manager.shutdown()


def test_short_beat_keeps_an_idle_object_host_and_drops_a_frozen_one(tmp_path: Path) -> None:
    with beat_cluster(tmp_path, SHORT_BEAT_S) as cluster:
        manager = dmp.Manager(address=cluster.address)
        try:
            shared = manager.dict()
            shared["k"] = 1
            host = object_host(cluster)
            hold(SHORT_IDLE_S, lambda: alive(host), "the object host exited while idle under a short heartbeat")
            assert shared["k"] == 1  # not dropped for beating at the default rate
            assert dropped_as_silent(cluster) == []
            with frozen(host):
                wait_for(
                    lambda: re.search(r"client objhost \(pid \d+\) on \S+ went silent", manager_log(cluster)),
                    DEFAULT_WINDOW_S, "the manager to drop the frozen object host",
                )
        finally:
            manager.shutdown()


CLIENT = """
import sys, dmp
pool = dmp.Pool(address=sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
"""


def test_short_beat_drops_a_frozen_worker_client_and_node(tmp_path: Path) -> None:
    with beat_cluster(tmp_path, SHORT_BEAT_S, processes=2) as cluster:
        # A worker stopped for a window is killed by its node (and replaced).
        victim = cluster.wait_workers("node1")[0]
        with frozen(victim):
            wait_for(lambda: not alive(victim), DEFAULT_WINDOW_S, "the node to kill its frozen worker")
        cluster.wait_slots(2)
        # A client stopped for a window is dropped by the manager.
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, cluster.address], env=cluster.env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            assert client.stdout is not None and client.stdout.readline().strip() == "ready"
            with frozen(client.pid):
                wait_for(
                    lambda: re.search(rf"client client-{client.pid} \(pid {client.pid}\) on \S+ went silent",
                                      manager_log(cluster)),
                    DEFAULT_WINDOW_S, "the manager to drop the frozen client",
                )
        finally:
            client.kill()
            client.wait(10)
        # A node stopped for a window is dropped, its workers with it.
        with frozen(cluster.nodes["node1"].pid):
            wait_for(lambda: "node1" not in cluster.node_names(), DEFAULT_WINDOW_S, "the manager to drop the frozen node")


def test_short_beat_client_gives_up_on_a_frozen_manager(tmp_path: Path) -> None:
    with beat_cluster(tmp_path, SHORT_BEAT_S) as cluster, dmp.Pool(address=cluster.address) as pool:
        assert pool.apply(abs, (-1,)) == 1
        assert cluster.manager is not None
        with frozen(cluster.manager.pid), pytest.raises(dmp.ManagerUnavailableError):
            pool.apply_async(abs, (-2,)).get(DEFAULT_WINDOW_S)
