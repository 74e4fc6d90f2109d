"""The manager's door (dmp_server.door): calls on the reactor kinds over a unix socket.

A real `dmp manager` daemon per test; interruptions are real signals in this
process, and the crossing of a reply and its cancel is forced by running the
other client's call just before the cancel goes out.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dmp
from dmp.client import directlink, doorlink, proxies
from dmp.errors import ManagerUnavailableError
from dmp.wire import direct, protocol
from tests.daemons import Daemons

from .conftest import Daemon, start_daemon

pytestmark = pytest.mark.timeout(60)


class Interrupted(Exception):
    pass


@pytest.fixture
def alarm() -> Iterator[Any]:
    """``alarm(seconds)``: raise Interrupted in this (the main) thread after ``seconds``."""

    def ring(*_: Any) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, ring)
    try:
        yield lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _door(address: str) -> str:
    welcome = proxies.connection(address).link.welcome
    assert welcome is not None
    return welcome.direct


def test_calls_take_the_door_and_agree(daemon: Daemon) -> None:
    m = dmp.Manager(address=daemon.address)
    q, lock, event = m.Queue(), m.Lock(), m.Event()
    for i in range(20):
        q.put(i)
    assert [q.get() for _ in range(20)] == list(range(20))
    door = _door(daemon.address)
    assert door.startswith(direct.PREFIX) and any(
        slot.startswith(door) for slot in directlink._local.socks
    )
    assert lock.acquire() and not lock.acquire(timeout=0.05)
    lock.release()
    event.set()
    assert event.wait(1)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)


def test_an_interrupted_get_loses_nothing(daemon: Daemon, alarm: Any) -> None:
    q = dmp.Manager(address=daemon.address).Queue()
    q.put("warm")
    assert q.get() == "warm"  # the door connection is open
    alarm(0.3)
    with pytest.raises(Interrupted):
        q.get()  # parked, then cancelled
    q.put("a")
    assert q.get(timeout=5) == "a"  # the cancelled get took nothing


def test_a_get_answered_while_being_interrupted_puts_the_item_back(
    daemon: Daemon, alarm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = dmp.Manager(address=daemon.address)
    q = m.Queue()
    q.put("warm")
    assert q.get() == "warm"
    other = proxies.Connection(daemon.address, None)  # another peer, over ZeroMQ
    send_cancel = doorlink._send_cancel

    def put_first(sock: Any, ref: int) -> None:
        frames = dmp.serialization.dumps("x")
        reply, _ = other.request(protocol.ObjCall(0, q._token.id, "put", [], -1.0, 1), frames)  # type: ignore[attr-defined]
        assert reply.status == protocol.ObjStatus.OK
        time.sleep(0.5)  # the parked get is answered on the door meanwhile
        send_cancel(sock, ref)

    monkeypatch.setattr(doorlink, "_send_cancel", put_first)
    try:
        alarm(0.3)
        with pytest.raises(Interrupted):
            q.get()
        assert q.get(timeout=5) == "x"  # undone: back in the queue
    finally:
        other.close()


def test_an_acquire_granted_while_being_interrupted_releases_the_lock(
    daemon: Daemon, alarm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = dmp.Manager(address=daemon.address).Lock()
    other = proxies.Connection(daemon.address, None)
    oid = lock._token.id  # type: ignore[attr-defined]
    try:
        reply, _ = other.request(protocol.ObjCall(0, oid, "acquire", [], -1.0, 1))
        assert reply.value is True
        send_cancel = doorlink._send_cancel

        def release_first(sock: Any, ref: int) -> None:
            other.request(protocol.ObjCall(0, oid, "release", [], -1.0, 1))
            time.sleep(0.5)
            send_cancel(sock, ref)

        monkeypatch.setattr(doorlink, "_send_cancel", release_first)
        alarm(0.3)
        with pytest.raises(Interrupted):
            lock.acquire()
        reply, _ = other.request(protocol.ObjCall(0, oid, "acquire", [], 5.0, 1))
        assert reply.value is True  # the grant we gave up was released
    finally:
        other.close()


def test_a_wrong_key_or_a_stranger_is_refused_at_the_door(tmp_path: Path) -> None:
    d = start_daemon(authkey=b"door key", logdir=tmp_path / "daemon")
    try:
        q = dmp.Manager(address=d.address, authkey=b"door key").Queue()
        q.put(1)
        assert q.get() == 1
        door = _door(d.address)
        with pytest.raises(direct.DirectError, match="key proof"):
            direct.connect(door, b"wrong key")
        with pytest.raises(direct.DirectError, match="requires an authkey"):
            direct.connect(door, None)
        # The right key but a peer id the manager never admitted: nothing runs.
        sock = direct.connect(door, b"door key")
        try:
            direct.send_claim(sock, "00" * 5)
            frames = dmp.serialization.dumps(2)
            call = protocol.ObjCall(7, q._token.id, "put", [], -1.0, 1)  # type: ignore[attr-defined]
            reply, _ = direct.request(sock, direct.Reader(), call, frames)
            assert (
                isinstance(reply, protocol.ObjReply) and reply.status == protocol.ObjStatus.REDIRECT
            )
        finally:
            sock.close()
        assert q.qsize() == 0
        q.put(3)
        assert q.get() == 3  # the door still serves its honest client
    finally:
        d.stop()


def test_manager_death_during_a_door_call_is_an_error_not_a_hang(tmp_path: Path) -> None:
    d = Daemons(tmp_path / "daemon")
    d.start(nodes=0)
    try:
        q = dmp.Manager(address=d.address).Queue()
        q.put(0)
        assert q.get() == 0
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                q.get()
            except BaseException as exc:
                errors.append(exc)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        time.sleep(0.3)
        d.manager.kill()
        waiter.join(30)
        assert not waiter.is_alive(), "the door call hung after the manager died"
        assert errors and isinstance(errors[0], ManagerUnavailableError), errors
    finally:
        d.stop()


def test_many_threads_at_once_all_get_answers(daemon: Daemon) -> None:
    """More threads than the door proves keys at once: those it turns away use ZeroMQ."""
    m = dmp.Manager(address=daemon.address)
    q, d = m.Queue(), m.dict()
    errors: list[BaseException] = []
    start = threading.Barrier(40)

    def work(i: int) -> None:
        try:
            start.wait(10)
            q.put(i)
            d[i] = i
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert sorted(q.get(timeout=5) for _ in range(40)) == list(range(40))
    assert dict(d) == {i: i for i in range(40)}


def test_garbage_or_other_messages_at_the_door_drop_only_that_connection(daemon: Daemon) -> None:
    q = dmp.Manager(address=daemon.address).Queue()
    q.put(1)
    assert q.get() == 1
    conn = proxies.connection(daemon.address)
    welcome = conn.link.welcome
    assert welcome is not None
    for junk in (
        b"\xff" * 12 + b"garbage",  # a header over the limit
        b"".join(bytes(b) for b in direct.encode(protocol.ObjCreate(1, "Queue"))),  # not a call
        b"\x05\x00\x00\x00" + b"\x00" * 8 + b"\xc1\xc1\xc1\xc1\xc1",  # not msgpack
    ):
        sock = direct.connect(welcome.direct, None)
        try:
            direct.send_claim(sock, welcome.peer_id)
            sock.sendall(junk)
            sock.settimeout(10)
            assert sock.recv(1) == b""  # the manager closed it
        finally:
            sock.close()
    q.put(2)
    assert q.get() == 2  # the manager and our own door connection serve on


def test_a_dropped_door_connection_is_seen_at_once_though_the_host_forked_after_it() -> None:
    """The object host is forked from the manager after our door connection was accepted,
    so it holds a copy of the manager's end: dropping must still give us EOF (shutdown)."""
    with dmp.Manager() as m:
        q = m.Queue()
        q.put(0)
        assert q.get() == 0  # our door connection exists
        d = m.dict()  # forks the object host now
        d["k"] = 1
        welcome = proxies.connection(m.address).link.welcome  # type: ignore[arg-type]
        assert welcome is not None
        sock, _ = directlink._local.socks[f"{welcome.direct}#{welcome.peer_id}"]
        sock.sendall(b"\xff" * 12)  # garbage first: the manager drops this connection
        with pytest.raises(ManagerUnavailableError, match="direct route"):
            q.put(1)  # its reply never comes; EOF does, at once
        q.put(2)  # a fresh connection
        assert q.get(timeout=5) == 2
