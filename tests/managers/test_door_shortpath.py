"""The door's short path (dmp_server.doorcall) and the client's (doorlink.call): same answers as the usual path.

A real `dmp manager` daemon per test (or the manager process dmp.Manager()
forks). Requests are also written by hand on a raw door connection, once in
the shape the short path takes and once in a shape only the usual path
takes (the same call with an int timeout), and their replies compared.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest

import dmp
from dmp.client import proxies
from dmp.wire import direct, protocol

from .conftest import Daemon

pytestmark = pytest.mark.timeout(60)
OK, FAILED = protocol.ObjStatus.OK, protocol.ObjStatus.FAILED


class RawDoor:
    """A door connection of our own, speaking for this process's peer."""

    def __init__(self, address: str) -> None:
        welcome = proxies.connection(address).link.welcome
        assert welcome is not None and welcome.direct
        self.sock = direct.connect(welcome.direct, None)
        direct.send_claim(self.sock, welcome.peer_id)
        self.sock.settimeout(10)
        self.reader = direct.Reader()
        self.ref = 1000

    def call(
        self, oid: Any, method: Any, args: Any = (), frames: Any = (), timeout: Any = -1.0, extra: Any = ()
    ) -> tuple[int, Any, list[bytes]]:
        self.ref += 1
        sizes = [len(f) for f in frames]
        head = [protocol.PROTOCOL_VERSION, protocol.ObjCall.TYPE, sizes, self.ref, oid, method, list(args), timeout, 7, *extra]
        header = msgpack.packb(head)
        self.sock.sendall(direct.PREFIX_STRUCT.pack(len(header), sum(sizes)) + header + b"".join(frames))
        while (whole := self.reader.next()) is None:
            chunk = self.sock.recv(1 << 16)
            assert chunk, "the manager closed the connection"
            self.reader.feed(chunk)
        reply, out = direct.decode(whole)
        assert isinstance(reply, protocol.ObjReply) and reply.ref == self.ref
        return reply.status, reply.value, [bytes(f) for f in out]

    def close(self) -> None:
        self.sock.close()


def test_the_short_path_answers_as_the_usual_path(daemon: Daemon) -> None:
    m = dmp.Manager(address=daemon.address)
    raw = RawDoor(daemon.address)
    try:
        answers = {}
        for timeout in (0.0, 0):  # a float: the short path; an int: only the usual path takes it
            q, jq, sem = m.Queue(maxsize=2), m.JoinableQueue(), m.Semaphore(1)
            oid = q._token.id  # type: ignore[attr-defined]
            got = [
                raw.call(oid, "put", frames=[b"one"], timeout=timeout),
                raw.call(oid, "put", frames=[b"two"], timeout=timeout),
                raw.call(oid, "put", frames=[b"three"], timeout=timeout),  # Full
                raw.call(oid, "qsize", timeout=timeout),
                raw.call(oid, "full", timeout=timeout),
                raw.call(oid, "get", timeout=timeout),
                raw.call(oid, "get", timeout=timeout),
                raw.call(oid, "get", timeout=timeout),  # Empty
                raw.call(oid, "empty", timeout=timeout),
                raw.call(oid, "no_such_method", timeout=timeout),
                raw.call(10**6, "get", timeout=timeout),  # no such object
                raw.call(jq._token.id, "put", frames=[b"j"], timeout=timeout),  # type: ignore[attr-defined]
                raw.call(jq._token.id, "get", timeout=timeout),  # type: ignore[attr-defined]
                raw.call(jq._token.id, "task_done", timeout=timeout),  # type: ignore[attr-defined]
                raw.call(jq._token.id, "task_done", timeout=timeout),  # type: ignore[attr-defined]  # too many
                raw.call(sem._token.id, "release", [1], timeout=timeout),  # type: ignore[attr-defined]
                raw.call(sem._token.id, "release", ["x"], timeout=timeout),  # type: ignore[attr-defined]
                raw.call(sem._token.id, "acquire", timeout=timeout),  # type: ignore[attr-defined]
                raw.call(sem._token.id, "acquire", timeout=timeout),  # type: ignore[attr-defined]
            ]
            answers[type(timeout)] = got
        assert answers[float] == answers[int]
        got = answers[float]
        assert [s for s, _, _ in got[:3]] == [OK, OK, FAILED] and got[2][1][0] == "Full"
        assert got[3][:2] == (OK, 2) and got[4][:2] == (OK, True)
        assert got[5] == (OK, None, [b"one"]) and got[6] == (OK, None, [b"two"])
        assert got[7][0] == FAILED and got[7][1][0] == "Empty"
        assert got[9][1][0] == "AttributeError" and got[10][1][0] == "ReferenceError"
        assert got[14][0] == FAILED and got[16][1][0] == "TypeError"
        # Arguments the short path does not take (a nested list) still get the usual answer.
        assert raw.call(sem._token.id, "release", [[1]])[1][0] == "TypeError"  # type: ignore[attr-defined]
    finally:
        raw.close()
    q.put("still serving")
    assert q.get() == "still serving"


def test_an_ext_type_in_the_arguments_drops_only_that_connection(daemon: Daemon) -> None:
    q = dmp.Manager(address=daemon.address).Queue()
    raw = RawDoor(daemon.address)
    try:
        header = msgpack.packb(
            [protocol.PROTOCOL_VERSION, protocol.ObjCall.TYPE, [], 1, q._token.id, "qsize", [msgpack.ExtType(1, b"x")], -1.0, 7]  # type: ignore[attr-defined]
        )
        raw.sock.sendall(direct.PREFIX_STRUCT.pack(len(header), 0) + header)
        assert raw.sock.recv(1) == b""  # refused as before: the usual decoding allows no ext types
    finally:
        raw.close()
    q.put(1)
    assert q.get() == 1


@pytest.mark.parametrize("local", [True, False], ids=["local", "cluster"])
def test_blocking_calls_park_and_wake_across_threads(daemon: Daemon, local: bool) -> None:
    m = dmp.Manager() if local else dmp.Manager(address=daemon.address)
    try:
        q = m.Queue(maxsize=1)
        got: list[Any] = []
        getter = threading.Thread(target=lambda: got.append(q.get(timeout=30)))
        getter.start()
        q.put("woken")  # a getter waits: the full path, whose reply goes to the other thread
        getter.join(30)
        assert got == ["woken"]
        q.put(1)
        with pytest.raises(queue.Full):
            q.put(2, timeout=0.05)
        with pytest.raises(queue.Full):
            q.put_nowait(2)
        putter = threading.Thread(target=q.put, args=(2,), kwargs={"timeout": 30})
        putter.start()  # parks: the queue is full
        assert q.get(timeout=5) == 1  # makes room: the parked put goes in
        putter.join(30)
        assert q.get(timeout=5) == 2
        with pytest.raises(queue.Empty):
            q.get_nowait()
        jq = m.JoinableQueue()
        jq.put("job")
        assert jq.get() == "job"
        jq.task_done()
        jq.join()
    finally:
        if local:
            m.shutdown()


@pytest.mark.parametrize("local", [True, False], ids=["local", "cluster"])
def test_lambdas_and_objects_of_main_travel_by_value(daemon: Daemon, local: bool, tmp_path: Path) -> None:
    """A queue item is pickled as a task is: plain pickle for plain data, cloudpickle
    (``__main__`` by value) otherwise. The getter is another interpreter in cluster mode."""
    script = tmp_path / "main_items.py"
    script.write_text(textwrap.dedent("""
        import subprocess, sys
        import dmp

        class Point:
            def __init__(self, x):
                self.x = x

        if __name__ == "__main__":
            address = sys.argv[1]
            m = dmp.Manager() if address == "local" else dmp.Manager(address=address)
            q = m.Queue()
            q.put(lambda v: v * 3)
            q.put(Point(7))
            if address == "local":
                f, p = q.get(), q.get()
                print(f(p.x))
                m.shutdown()
            else:
                import pickle  # the getter rebuilds the proxy from its pickle; it has no Point
                code = (
                    "import pickle, sys; q = pickle.loads(bytes.fromhex(sys.argv[1])); "
                    "f, p = q.get(timeout=10), q.get(timeout=10); print(f(p.x))"
                )
                out = subprocess.run([sys.executable, "-c", code, pickle.dumps(q).hex()],
                                     capture_output=True, text=True, timeout=60)
                sys.stderr.write(out.stderr)
                print(out.stdout.strip())
    """))
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(root / "server")]))
    out = subprocess.run(
        [sys.executable, str(script), "local" if local else daemon.address],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "21", out.stderr


def _chunk(head: list[Any], payload: bytes = b"") -> bytes:
    header = msgpack.packb(head)
    return direct.PREFIX_STRUCT.pack(len(header), len(payload)) + header + payload


def test_which_calls_the_short_path_takes() -> None:
    """The comparison above is between these two shapes: the short path decodes the first
    kind itself and leaves every other to the usual decoding and its checks."""
    from dmp_server import doorcall

    v, t = protocol.PROTOCOL_VERSION, protocol.ObjCall.TYPE
    assert doorcall.decode(_chunk([v, t, [3], 5, 1, "put", [], -1.0, 7], b"abc")) == (
        5, 1, "put", [], -1.0, 7, [b"abc"]
    )
    assert doorcall.decode(_chunk([v, t, [], 5, 1, "release", [2], 0.0, 7])) is not None
    for head, payload in (
        ([v, t, [], 5, 1, "get", [], 0, 7], b""),  # an int timeout
        ([v, t, [], 5, 1, "get", [[1]], 0.0, 7], b""),  # a list in the arguments
        ([v, t, [], 5, 1, "get", [msgpack.ExtType(1, b"x")], 0.0, 7], b""),
        ([v, t, [1, 2], 5, 1, "put", [], 0.0, 7], b"abc"),  # two frames
        ([v, t, [2], 5, 1, "put", [], 0.0, 7], b"abc"),  # sizes do not add up
        ([v, t, [], True, 1, "get", [], 0.0, 7], b""),  # a bool ref
        ([v, t, [], 5, 1, "get", [], 0.0], b""),  # a field left off
        ([v + 1, t, [], 5, 1, "get", [], 0.0, 7], b""),  # another version
        ([v, protocol.ObjCancel.TYPE, [], 5], b""),
    ):
        assert doorcall.decode(_chunk(head, payload)) is None, head
    whole = _chunk([v, t, [], 5, 1, "get", [], 0.0, 7])
    assert doorcall.decode(whole + whole) is None  # two messages in one read
    assert doorcall.decode(whole[:-1]) is None


def test_a_connection_given_up_is_not_kept_for_door_calls(daemon: Daemon) -> None:
    """After this process's connection is dropped (a manager forgotten and met again),
    calls go through the door for the new connection's peer, not the old one's."""
    from dmp.client import directlink, doorlink, proxylink

    q = dmp.Manager(address=daemon.address).Queue()
    q.put(1)
    assert q.get() == 1
    other = proxies.Connection(daemon.address, None)  # another peer holds the queue too
    try:
        reply, _ = other.request(protocol.ObjCall(0, q._token.id, "qsize", [], -1.0, 1))  # type: ignore[attr-defined]
        assert reply.status == OK
        old = proxylink.connection(daemon.address)
        proxylink.forget(daemon.address)  # says Bye: the manager forgets that peer
        for i in range(3):
            q.put(i)
            assert q.get(timeout=10) == i
        new = proxylink.connection(daemon.address)
        assert new is not old and new.link.welcome is not None
        assert doorlink._open.by_address[daemon.address][0] is new
        assert f"{new.link.welcome.direct}#{new.link.welcome.peer_id}" in directlink._local.socks
    finally:
        other.close()


def test_a_forked_child_calls_through_a_door_of_its_own(daemon: Daemon) -> None:
    """The child of a fork drops this thread's doors on its first call (no at-fork
    handler does it): a door socket shared with the parent would mix their replies."""
    from dmp.client import doorlink

    q = dmp.Manager(address=daemon.address).Queue()
    q.put(1)  # the short path: this thread's door to the manager, kept in doorlink._open
    ours = doorlink._open.by_address[daemon.address]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            q.put(2)
            theirs = doorlink._open.by_address.get(daemon.address)
            code = 2 if theirs is not None and theirs[2] is ours[2] else 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert doorlink._open.by_address[daemon.address] is ours
    assert q.get(timeout=10) == 1 and q.get(timeout=10) == 2
