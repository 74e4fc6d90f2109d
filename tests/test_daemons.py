"""The daemon harness itself: it reads the bound port back, and leaves nothing running, whatever fails."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

import dmp
from tests.daemons import (
    Daemons,
    alive,
    children,
    forget_address,
    kill_leftovers,
    start_cluster,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)


def test_the_manager_binds_port_0_and_reports_its_port(tmp_path: Path) -> None:
    d = Daemons(tmp_path)
    try:
        d.start(nodes=0)
        assert d.address.startswith("tcp://127.0.0.1:") and not d.address.endswith(":0")
        status = d.status(10)
        assert status is not None and status["manager"]["address"] == d.address
        assert status["manager"]["version"] == dmp.__version__
    finally:
        d.stop()
    assert d.manager is not None and not alive(d.manager.pid)


def test_a_failed_start_leaves_nothing_behind(tmp_path: Path) -> None:
    """The nodes join a manager, but never with the slots asked for: start() raises and kills them all."""
    d = Daemons(tmp_path)
    d.start_manager()
    node = d.start_node("node1", processes=1)
    workers = wait_for(lambda: children(node.pid), 60, "node1's worker")
    with pytest.raises(AssertionError, match="worker slots"):
        d.wait_slots(99, timeout=1.0)
    d.stop()
    assert not any(alive(p.pid) for p in d.procs)
    assert not any(alive(pid) for pid in workers)


def test_start_cluster_raises_and_kills_when_the_manager_cannot_start(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="exited"):
        start_cluster(tmp_path, nodes=1, manager_args=("--heartbeat-s", "0"))


def test_stop_kills_the_workers_of_a_node_that_was_sigkilled(tmp_path: Path) -> None:
    d = start_cluster(tmp_path, nodes=1, processes=2)
    try:
        workers = d.wait_workers("node1")
        d.nodes["node1"].send_signal(signal.SIGKILL)
        d.nodes["node1"].wait(10)
    finally:
        d.stop()
    wait_for(lambda: not any(alive(pid) for pid in workers), 30, f"workers {workers} to die")


def test_the_session_sweep_kills_daemons_nobody_stopped(tmp_path: Path) -> None:
    d = Daemons(tmp_path)
    manager = d.start_manager()
    swept = kill_leftovers([manager.pid])  # only ours: session-scoped clusters of other tests live on
    assert swept == [manager.pid]
    assert manager.poll() is not None
    d.stop()  # nothing left to do, and no error


def test_a_port_reused_by_a_fresh_manager_forgets_the_earlier_managers_key(tmp_path: Path) -> None:
    """The pytest worker remembers the key a manager at an address accepted; a
    later test's keyless manager that the kernel gives the same port must not
    meet that key. Without the harness's reset the client keeps the key (dmp
    never falls back to no key, which a squatter would exploit) and is refused
    with the error CI once saw in tests/managers/test_door.py."""
    keyed = Daemons(tmp_path / "keyed", authkey=b"an-earlier-tests-key").start(nodes=0)
    address = keyed.address
    try:
        q = dmp.Manager(address=address, authkey=b"an-earlier-tests-key").Queue()
        q.put(1)
        assert q.get(timeout=10) == 1
    finally:
        keyed.stop()
    keyless = Daemons(tmp_path / "keyless", address=address)  # the same port, on purpose
    try:
        keyless.start(nodes=0)
        with pytest.raises(dmp.AuthenticationError, match=r"not signed.*accepted earlier in this process"):
            dmp.Manager(address=address).Queue()
        forget_address(address)  # what start() does for a manager that bound port 0
        q = dmp.Manager(address=address).Queue()
        q.put(2)
        assert q.get(timeout=10) == 2
    finally:
        keyless.stop()
