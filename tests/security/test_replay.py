"""Replay and impersonation (issue 11, items 1 to 4): what a recording attacker
without the key can do with captured messages. Nothing, it turns out.

Each test captures real traffic through a :class:`RecordingProxy` placed
between a real peer and a real keyed manager, then replays it the way the
issue reports: toward a worker and a client from a keyless fake manager
(item 1), toward the manager as phantom workers (2) and a phantom node (3),
and squats the identities a respawned worker would take (4).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import dmp
from tests.faults import tasks
from tests.faults.harness import FaultCluster, wait_for

from .attacker import FakeManager, RecordingProxy, decode, raw_dealer
from .conftest import KEY

pytestmark = pytest.mark.timeout(120)


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@pytest.fixture
def spied(tmp_path: Path) -> Iterator[tuple[FaultCluster, RecordingProxy, FaultCluster]]:
    """A keyed manager, and a node of two workers that reaches it only through a recording proxy."""
    manager = FaultCluster(tmp_path / "manager", authkey=KEY)
    node = FaultCluster(tmp_path / "node", authkey=KEY)
    proxy: RecordingProxy | None = None
    try:
        manager.start_manager()
        proxy = RecordingProxy(manager.address)
        node.address = proxy.address
        node.start_node("node1", processes=2)
        manager.wait_slots(2)
        yield manager, proxy, node
    finally:
        node.stop()
        if proxy is not None:
            proxy.close()
        manager.stop()


def _answered(socks: list[zmq.Socket[Any]], timeout_ms: int = 10_000) -> list[Any]:
    replies = []
    for sock in socks:
        assert sock.poll(timeout_ms), "the manager never answered a replayed Hello"
        replies.append(decode(sock.recv_multipart()))
    return replies


def test_1_a_replayed_welcome_and_dispatch_do_not_make_a_worker_run_a_task_again(
    spied: tuple[FaultCluster, RecordingProxy, FaultCluster], tmp_path: Path, markers: Path
) -> None:
    from dmp.wire import protocol

    manager, proxy, node = spied
    with dmp.Pool(address=manager.address, authkey=KEY) as pool:
        pool.apply(tasks.log_attempt, (str(markers), 0))
    assert len(tasks.attempts(str(markers), 0)) == 1
    ident, dispatch = _first_dispatch(proxy)
    welcome = proxy.sent_to(protocol.Welcome)
    welcome_parts = next(parts for who, parts in welcome if who == ident)
    node.stop()
    with FakeManager() as fake:
        victim = FaultCluster(tmp_path / "victim", authkey=KEY)
        victim.address = fake.address
        try:
            victim.start_node("victim", processes=1)
            worker, _ = fake.wait_hello(30, role="worker")
            fake.send(worker, welcome_parts)
            fake.send(worker, dispatch)
            # The worker refused both (it is still not joined): it says Hello again.
            fake.wait_hello(30, role="worker", ident=worker)
        finally:
            victim.stop()
    assert len(tasks.attempts(str(markers), 0)) == 1


def _first_dispatch(proxy: RecordingProxy) -> tuple[bytes, list[bytes]]:
    from dmp.wire import protocol

    found = wait_for(lambda: proxy.sent_to(protocol.Dispatch), 10, "a captured Dispatch")
    return found[0]  # type: ignore[no-any-return]


def test_1_a_replayed_welcome_does_not_open_a_session_for_a_new_client(cluster: FaultCluster) -> None:
    from dmp.wire import protocol

    with RecordingProxy(cluster.address) as proxy:
        with dmp.Pool(1, address=proxy.address, authkey=KEY) as pool:
            assert pool.apply(str.upper, ("old",)) == "OLD"
        client = proxy.sent_by(protocol.Hello, role="client")[0][0]
        welcome = next(parts for who, parts in proxy.sent_to(protocol.Welcome) if who == client)
        results = [parts for who, parts in proxy.sent_to(protocol.JobResults) if who == client]
    stop = threading.Event()
    with FakeManager() as fake:
        def play() -> None:  # a Welcome for every Hello, the old JobResults for every Submit
            while not stop.is_set():
                got = fake.recv(0.1)
                if got is None:
                    continue
                msg = decode(got[1])
                if isinstance(msg, protocol.Hello):
                    fake.send(got[0], welcome)
                elif isinstance(msg, protocol.Submit):
                    for parts in results:
                        fake.send(got[0], parts)

        player = threading.Thread(target=play, daemon=True)
        player.start()
        try:
            with pytest.raises(dmp.AuthenticationError):
                with dmp.Pool(1, address=fake.address, authkey=KEY) as pool:
                    pool.apply(str.upper, ("new",))
        finally:
            stop.set()
            player.join(5)


def test_2_a_replayed_worker_hello_takes_no_slot(spied: tuple[FaultCluster, RecordingProxy, FaultCluster]) -> None:
    from dmp.wire import protocol

    manager, proxy, _ = spied
    _, hello = proxy.sent_by(protocol.Hello, role="worker")[0]
    ctx = zmq.Context()
    try:
        phantoms = [raw_dealer(ctx, manager.address) for _ in range(4)]
        for sock in phantoms:
            sock.send_multipart(hello)
        assert all(isinstance(r, protocol.Welcome) for r in _answered(phantoms))  # a Welcome nobody can use
        status = manager.status()
        assert status is not None and status["slots"] == 2
        with dmp.Pool(address=manager.address, authkey=KEY) as pool:
            assert pool.map(tasks.square, range(20)) == [i * i for i in range(20)]
    finally:
        ctx.destroy(linger=0)


def test_3_a_replayed_node_hello_does_not_cost_the_real_node_its_workers(
    spied: tuple[FaultCluster, RecordingProxy, FaultCluster], markers: Path
) -> None:
    from dmp.wire import protocol

    manager, proxy, _ = spied
    _, hello = proxy.sent_by(protocol.Hello, role="node")[0]
    ctx = zmq.Context()
    try:
        with dmp.Pool(address=manager.address, authkey=KEY) as pool:
            long = pool.apply_async(tasks.sleep_logged, ((0, str(markers), 7.0),))
            wait_for(lambda: tasks.attempts(str(markers), 0), 20, "the long task to start")
            phantom = raw_dealer(ctx, manager.address)
            phantom.send_multipart(hello)  # then silent: the phantom "node" goes away
            assert isinstance(_answered([phantom])[0], protocol.Welcome)
            assert long.get(60)[0] == 0
        assert len(tasks.attempts(str(markers), 0)) == 1
        status = manager.status()
        assert status is not None and status["slots"] == 2
    finally:
        ctx.destroy(linger=0)


def test_4_squatting_the_next_worker_identities_does_not_lock_a_respawned_worker_out(cluster: FaultCluster) -> None:
    from dmp.wire import protocol

    node_pid = cluster.nodes["node1"].pid
    ctx = zmq.Context()
    try:
        # Identities as they were once made (node, pid, pool counter, serial): the next ones.
        squatters = [raw_dealer(ctx, cluster.address, f"node1/{node_pid}-1-{n}".encode()) for n in range(3, 7)]
        for sock in squatters:
            sock.send_multipart([b"", protocol.encode(protocol.Heartbeat())])
        replies = _answered(squatters)
        assert all(isinstance(r, protocol.Error) for r in replies)
        victim = cluster.wait_workers("node1")[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in cluster.worker_pids("node1") and len(cluster.worker_pids("node1")) == 2,
                 30, "the node to respawn its worker")
        cluster.wait_slots(2)
        with dmp.Pool(address=cluster.address, authkey=KEY) as pool:
            assert pool.map(tasks.square, range(8)) == [i * i for i in range(8)]
    finally:
        ctx.destroy(linger=0)
