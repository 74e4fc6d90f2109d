"""A blocking proxy call interrupted in the client loses nothing (real daemon, real sockets).

The interrupted request is cancelled in the manager (ObjCancel); a reply that
crossed the cancel is undone by the client (the item goes back, the lock is
released). Subprocesses are interrupted with a real SIGINT; the crossing
cases are forced in this process by delaying the cancel.
"""

from __future__ import annotations

import pickle
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import dmp
from dmp import serialization
from dmp.client import proxies
from dmp.wire import protocol

from .conftest import Daemon

pytestmark = pytest.mark.timeout(60)

# Children restore the default SIGINT handler: one inherited as ignored would stay ignored.
PRELUDE = """
import pickle, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
"""


class Child:
    """A client in a fresh interpreter, spoken to line by line, killed by PID at the end."""

    def __init__(self, code: str, env: dict[str, str], **objs: Any) -> None:
        load = "".join(f"{name} = pickle.loads(bytes.fromhex({pickle.dumps(obj).hex()!r}))\n" for name, obj in objs.items())
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRELUDE + load + textwrap.dedent(code)], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def expect(self, line: str, timeout: float = 20.0) -> None:
        got = self.readline(timeout)
        assert got == line, f"expected {line!r}, got {got!r}; stderr: {self.stderr()}"

    def readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else "<nothing>"

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(still running)"
        return self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    made: list[Child] = []
    try:
        yield made
    finally:
        for child in made:
            child.kill()


# Waits in a blocking call, is interrupted, then does what it is told line by line.
INTERRUPTED = """
obj.{warm}()  # connected before the call, so the call itself is quick to park
print("ready", flush=True)
try:
    obj.{call}()
    print("returned", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
for line in sys.stdin:
    if line.strip() == "roundtrip":
        obj.put("x")
        print(repr(obj.get(timeout=5)), flush=True)
"""
PARK_S = 0.5  # time for a call to reach the manager and park there


def _interrupted(children: list[Child], daemon: Daemon, obj: Any, call: str, warm: str) -> Child:
    child = Child(INTERRUPTED.format(call=call, warm=warm), daemon.env, obj=obj)
    children.append(child)
    child.expect("ready")
    time.sleep(PARK_S)
    child.interrupt()
    child.expect("interrupted")
    return child


def test_interrupted_get_does_not_swallow_the_next_item_of_the_same_process(daemon: Daemon, children: list[Child]) -> None:
    m = dmp.Manager(address=daemon.address)
    q = m.Queue()
    child = _interrupted(children, daemon, q, "get", "qsize")
    child.say("roundtrip")
    child.expect("'x'", timeout=10)
    assert q.qsize() == 0


def test_item_put_after_an_interrupted_get_reaches_a_third_consumer(daemon: Daemon, children: list[Child]) -> None:
    m = dmp.Manager(address=daemon.address)
    q = m.Queue()
    _interrupted(children, daemon, q, "get", "qsize")  # stays connected: its departure would hide the bug
    q.put("y")
    consumer = Child('print(repr(q.get(timeout=5)), flush=True)', daemon.env, q=q)
    children.append(consumer)
    consumer.expect("'y'", timeout=20)


def test_interrupted_acquire_does_not_take_the_lock_when_it_is_released(daemon: Daemon, children: list[Child]) -> None:
    m = dmp.Manager(address=daemon.address)
    lock = m.Lock()
    assert lock.acquire()
    _interrupted(children, daemon, lock, "acquire", "locked")  # stays connected
    lock.release()
    other = Child(
        "ok = lock.acquire(timeout=30)\nprint('acquired' if ok else 'timed out', flush=True)",
        daemon.env, lock=lock,
    )
    children.append(other)
    other.expect("acquired", timeout=60)


# --- the reply crosses the cancel: the client undoes it -----------------------------------


class Interrupted(BaseException):
    """Stands in for KeyboardInterrupt in a thread of this process."""


@pytest.fixture(autouse=True)
def _zeromq_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests drive the ZeroMQ link's waits and posts: calls must not take the
    manager's door (its interruptions are tested in test_door.py)."""
    monkeypatch.setenv("DMP_DIRECT_ROUTE", "0")


@pytest.fixture
def conn(daemon: Daemon) -> Iterator[proxies.Connection]:
    dmp.Manager(address=daemon.address)  # remembers the (no) key for this address
    conn = proxies.connection(daemon.address)
    try:
        yield conn
    finally:
        for name in ("wait", "post"):
            conn.link.__dict__.pop(name, None)  # the link's own methods again


def _interrupt_waits(conn: proxies.Connection, after_reply: bool) -> None:
    """This thread's next wait raises Interrupted: after 0.3 s, or once its reply came."""
    me, wait = threading.get_ident(), conn.link.wait

    def interrupted_wait(done: Any, block: Any, timeout: Any) -> None:
        if threading.get_ident() != me:
            return wait(done, block, timeout)
        del conn.link.wait  # once
        wait(done, block, 20.0 if after_reply else 0.3)
        assert done() == after_reply
        raise Interrupted

    conn.link.wait = interrupted_wait  # type: ignore[method-assign]


def _before_cancel(conn: proxies.Connection, act: Any) -> None:
    """Run ``act()`` before the next ObjCancel goes out, and let the reply it causes arrive first."""
    post = conn.link.post

    def delayed_post(msg: protocol.Message, frames: list[Any]) -> None:
        if isinstance(msg, protocol.ObjCancel):
            del conn.link.post
            act()
            deadline = time.monotonic() + 10
            while msg.ref in conn.abandoned and time.monotonic() < deadline:
                time.sleep(0.01)  # the link's thread dispatches the late reply and undoes it
            assert msg.ref not in conn.abandoned
        post(msg, frames)

    conn.link.post = delayed_post  # type: ignore[method-assign]


def _other_client(daemon: Daemon) -> proxies.Connection:
    return proxies.Connection(daemon.address, None)  # a second session: another peer to the manager


def _call(conn: proxies.Connection, obj: Any, method: str, item: Any = None, timeout: float = -1.0) -> Any:
    frames = serialization.dumps(item) if item is not None else []
    reply, _ = conn.request(protocol.ObjCall(0, obj._token.id, method, [], timeout, 1), frames)
    assert reply.status == protocol.ObjStatus.OK, reply
    return reply.value


def test_a_get_answered_while_being_interrupted_puts_the_item_back(daemon: Daemon, conn: proxies.Connection) -> None:
    q = dmp.Manager(address=daemon.address).Queue()
    other = _other_client(daemon)
    try:
        _interrupt_waits(conn, after_reply=False)
        _before_cancel(conn, lambda: _call(other, q, "put", "x"))
        with pytest.raises(Interrupted):
            q.get()
        assert q.get(timeout=5) == "x"
    finally:
        other.close()


def test_a_get_whose_reply_came_just_before_the_interrupt_puts_the_item_back(daemon: Daemon, conn: proxies.Connection) -> None:
    q = dmp.Manager(address=daemon.address).JoinableQueue()
    _interrupt_waits(conn, after_reply=True)
    threading.Timer(0.3, q.put, ("x",)).start()
    with pytest.raises(Interrupted):
        q.get()
    assert q.get(timeout=5) == "x"
    q.task_done()
    q.join()  # put back uncounted: one put, one task_done


def test_an_acquire_granted_while_being_interrupted_releases_the_lock(daemon: Daemon, conn: proxies.Connection) -> None:
    lock = dmp.Manager(address=daemon.address).Lock()
    other = _other_client(daemon)
    try:
        assert _call(other, lock, "acquire") is True
        _interrupt_waits(conn, after_reply=False)
        _before_cancel(conn, lambda: _call(other, lock, "release"))
        with pytest.raises(Interrupted):
            lock.acquire()
        assert _call(other, lock, "acquire", timeout=5.0) is True
    finally:
        other.close()


def test_an_interrupted_condition_wait_leaves_the_lock_released(daemon: Daemon, conn: proxies.Connection) -> None:
    cond = dmp.Manager(address=daemon.address).Condition()
    other = _other_client(daemon)
    try:

        def notify() -> None:
            for method in ("acquire", "notify", "release"):
                _call(other, cond, method)

        with pytest.raises(Interrupted), cond:  # the interruption comes through the with unchanged
            _interrupt_waits(conn, after_reply=False)
            _before_cancel(conn, notify)  # the wait is woken and takes the lock back: undone
            cond.wait()
        notify()  # a wait still parked would take the lock back now
        assert _call(other, cond, "acquire", timeout=5.0) is True
    finally:
        other.close()
