"""The manager daemon in process: its expiry of silent peers (LIVENESS beats, not counting
time it was held up itself), and who may announce a task."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from dmp_server.daemon import Daemon
from dmp_server.peers import LIVENESS, Peer

from dmp import _config
from dmp.wire.protocol import Role

pytestmark = pytest.mark.timeout(30)

BEAT = 0.2


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    m = Daemon(bind=[f"inproc://liveness-{uuid.uuid4().hex}"], heartbeat_s=BEAT)
    try:
        yield m
    finally:
        m.chan.close()


def _peer(daemon: Daemon, name: str, silent_for: float, now: float) -> None:
    daemon.peers.add(Peer(name, None, Role.NODE, name, "host", 1, "", now - silent_for))


def test_the_manager_counts_the_shared_liveness() -> None:
    assert LIVENESS == _config.LIVENESS


def test_a_peer_silent_for_more_than_liveness_beats_is_dropped(daemon: Daemon) -> None:
    now = time.monotonic()
    _peer(daemon, "quiet", BEAT * LIVENESS - 0.05, now)
    _peer(daemon, "gone", BEAT * LIVENESS + 0.05, now)
    daemon._tick(now)
    assert set(daemon.peers.by_id) == {"quiet"}


def test_time_the_reactor_was_held_up_is_not_held_against_peers(daemon: Daemon) -> None:
    now = time.monotonic()
    _peer(daemon, "queued", BEAT * LIVENESS + 1.0, now)  # its heartbeats wait unread in the socket
    daemon._tick(now, late=1.5)
    assert set(daemon.peers.by_id) == {"queued"}
    daemon._tick(now + BEAT)  # on time again: by now the backlog was read, or it is gone
    assert daemon.peers.by_id == {}


def test_an_idle_node_worker_beats_less_often_and_gets_a_window_as_much_longer(daemon: Daemon) -> None:
    """A node's idle workers beat once every WORKER_BEATS beats (their node answers for them)."""
    now = time.monotonic()
    window = BEAT * LIVENESS * _config.WORKER_BEATS
    daemon.peers.add(Peer("node", None, Role.NODE, "n", "host", 1, "", now))
    for name, silent_for in (("quiet", window - 0.05), ("gone", window + 0.05)):
        daemon.peers.add(Peer(name, None, Role.WORKER, name, "host", 2, "n", now - silent_for))
        daemon.scheduler.add_worker(name, "n", 2, 0)
    daemon._tick(now)
    assert set(daemon.peers.by_id) == {"node", "quiet"}
    assert set(daemon.scheduler.workers) == {"quiet"}


def test_the_node_index_follows_joins_and_departures(daemon: Daemon) -> None:
    now = time.monotonic()
    first = Peer("a", None, Role.NODE, "n", "host", 1, "", now)
    second = Peer("b", None, Role.NODE, "n", "host", 2, "", now)  # the same name from another process
    daemon.peers.add(first)
    daemon.peers.add(second)
    assert daemon.peers.node("n") is second and daemon.peers.count(Role.NODE) == 2
    daemon._forget("b")
    assert daemon.peers.node("n") is first and daemon.peers.count(Role.NODE) == 1
    daemon._forget("a")
    assert daemon.peers.node("n") is None and daemon.peers.count(Role.NODE) == 0


def test_only_a_tasks_own_worker_may_announce_it(daemon: Daemon) -> None:
    """TaskStarted decides where Process.terminate's signal goes (Scheduler.signal_job), and
    tells the client the process's pid: another worker's announcement is ignored."""
    from dmp.wire import protocol

    s = daemon.scheduler
    s.add_client("c0")  # peer ids are hex (routing ids)
    s.add_worker("a1", "node-a", 101, 0)
    s.add_worker("a2", "node-a", 102, 0)
    s.define_job("c0", 1, [b"runner"], 0)
    s.submit("c0", 1, [(0, [b"task"])])
    (key, task), = s.tasks.items()
    owner, other = task.worker, ("a2" if task.worker == "a1" else "a1")
    daemon._task_started(other, protocol.TaskStarted(key, 999, "node-a"), [])
    assert not task.started
    daemon._task_started(owner, protocol.TaskStarted(key, 101, "node-a"), [])
    assert task.started
