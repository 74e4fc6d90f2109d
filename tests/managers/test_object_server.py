"""The ObjectServer and the reactor kinds as state machines: events in, commands out, no I/O."""

from __future__ import annotations

from typing import Any

import pytest
from dmp_server.objects import ObjectServer
from dmp_server.scheduler import Send

from dmp.wire import protocol
from dmp.wire.protocol import ObjCall, ObjCreate, ObjReply, ObjStatus

pytestmark = pytest.mark.timeout(60)


class Harness:
    def __init__(self, launcher: Any = None) -> None:
        self.server = ObjectServer(launcher)
        self.now = 100.0
        self._ref = 0

    def send(self, peer: str, msg: protocol.Message, frames: list[Any] | None = None) -> list[Send]:
        cmds = self.server.handle(peer, msg, frames or [], self.now)
        assert all(isinstance(c, Send) for c in cmds)
        return cmds  # type: ignore[return-value]

    def create(self, peer: str, kind: str, args: list[Any] | None = None, frames: list[Any] | None = None) -> int:
        (cmd,) = self.send(peer, ObjCreate(1, kind, "", args or []), frames)
        assert isinstance(cmd.msg, ObjReply) and cmd.msg.status == ObjStatus.OK, cmd
        return cmd.msg.oid

    def call(self, peer: str, oid: int, method: str, args: list[Any] | None = None, *, timeout: float = -1.0,
             thread: int = 1, frames: list[Any] | None = None) -> tuple[int, list[Send]]:
        self._ref += 1
        return self._ref, self.send(peer, ObjCall(self._ref, oid, method, args or [], timeout, thread), frames)

    def advance(self, seconds: float) -> list[Send]:
        self.now += seconds
        return self.server.tick(self.now)  # type: ignore[return-value]


def replies(cmds: list[Send]) -> dict[tuple[str, int], ObjReply]:
    return {(c.to, c.msg.ref): c.msg for c in cmds if isinstance(c.msg, ObjReply)}


def only(cmds: list[Send]) -> ObjReply:
    (cmd,) = cmds
    assert isinstance(cmd.msg, ObjReply)
    return cmd.msg


def test_queue_get_parks_until_a_put_and_items_pass_through_untouched() -> None:
    h = Harness()
    q = h.create("a", "Queue")
    ref, cmds = h.call("b", q, "get")
    assert cmds == [] and h.server.next_deadline() is None  # parked, no deadline
    _, cmds = h.call("a", q, "put", frames=[b"item"])
    got = replies(cmds)
    assert got[("b", ref)].status == ObjStatus.OK
    assert [c.frames for c in cmds if c.to == "b"] == [[b"item"]]


def test_queue_get_timeout_expires_with_empty_and_fifo_order() -> None:
    h = Harness()
    q = h.create("a", "Queue")
    ref, cmds = h.call("a", q, "get", timeout=0.5)
    assert cmds == [] and h.server.next_deadline() == pytest.approx(100.5)
    assert h.advance(0.4) == []
    msg = only(h.advance(0.2))
    assert (msg.ref, msg.status, msg.value) == (ref, ObjStatus.FAILED, ["Empty", ""])
    for item in (b"1", b"2"):
        h.call("a", q, "put", frames=[item])
    assert [c.frames for c in h.call("a", q, "get")[1]] == [[b"1"]]
    assert only(h.call("a", q, "get", timeout=0)[1]).status == ObjStatus.OK
    assert only(h.call("a", q, "get", timeout=0)[1]).value == ["Empty", ""]


def test_bounded_queue_parks_putters_and_admits_them_in_order() -> None:
    h = Harness()
    q = h.create("a", "Queue", [1])
    h.call("a", q, "put", frames=[b"1"])
    assert only(h.call("a", q, "put", timeout=0, frames=[b"x"])[1]).value == ["Full", ""]
    ref, cmds = h.call("b", q, "put", frames=[b"2"])
    assert cmds == []
    _, cmds = h.call("a", q, "get")
    assert replies(cmds)[("b", ref)].status == ObjStatus.OK  # room made: b's put went in
    assert [c.frames for c in h.call("a", q, "get")[1]] == [[b"2"]]


def test_joinable_queue_join_waits_for_every_task_done() -> None:
    h = Harness()
    q = h.create("a", "JoinableQueue")
    h.call("a", q, "put", frames=[b"1"])
    ref, cmds = h.call("b", q, "join")
    assert cmds == []
    h.call("a", q, "get")
    _, cmds = h.call("a", q, "task_done")
    assert ("b", ref) in replies(cmds)
    assert only(h.call("a", q, "task_done")[1]).value[0] == "ValueError"


def test_lock_waiter_is_granted_on_release_and_timeouts_say_false() -> None:
    h = Harness()
    lock = h.create("a", "Lock")
    assert only(h.call("a", lock, "acquire")[1]).value is True
    assert only(h.call("b", lock, "acquire", timeout=0)[1]).value is False
    ref_t, _ = h.call("b", lock, "acquire", timeout=1.0)
    ref_w, cmds = h.call("c", lock, "acquire")
    assert cmds == []
    assert only(h.advance(1.5)).ref == ref_t  # b timed out: False
    _, cmds = h.call("a", lock, "release")
    got = replies(cmds)
    assert got[("c", ref_w)].value is True
    assert only(h.call("a", lock, "release")[1]).status == ObjStatus.OK  # any thread may release a Lock
    assert only(h.call("a", lock, "release")[1]).value == ["RuntimeError", "release unlocked lock"]


def test_crashed_rlock_holder_is_released_and_the_next_waiter_granted() -> None:
    h = Harness()
    lock = h.create("a", "RLock")
    h.call("holder", lock, "acquire")
    ref, cmds = h.call("b", lock, "acquire")
    assert cmds == []
    cmds = h.server.peer_gone("holder")
    assert replies(cmds)[("b", ref)].value is True


def test_rlock_of_a_holder_that_said_bye_stays_held() -> None:
    h = Harness()
    lock = h.create("a", "RLock")
    h.call("holder", lock, "acquire")
    h.call("b", lock, "acquire")
    assert replies(h.server.peer_gone("holder", crashed=False)) == {}
    assert only(h.call("c", lock, "acquire", timeout=0)[1]).value is False


def test_plain_lock_stays_held_when_its_holder_leaves_or_crashes_and_anyone_may_release_it() -> None:
    # As multiprocessing.Lock: a child may take it and exit, the parent releases it.
    for crashed in (False, True):
        h = Harness()
        lock = h.create("a", "Lock")
        h.call("child", lock, "acquire")
        ref, cmds = h.call("b", lock, "acquire")
        assert replies(h.server.peer_gone("child", crashed=crashed)) == {}
        assert only(h.call("a", lock, "locked")[1]).value is True
        _, cmds = h.call("a", lock, "release")
        assert replies(cmds)[("b", ref)].value is True


def test_rlock_recursion_and_ownership() -> None:
    h = Harness()
    rlock = h.create("a", "RLock")
    for _ in range(2):
        assert only(h.call("a", rlock, "acquire", thread=7)[1]).value is True
    ref, cmds = h.call("a", rlock, "acquire", thread=8)  # same peer, other thread: waits
    assert cmds == []
    assert only(h.call("b", rlock, "release")[1]).value[0] == "RuntimeError"
    assert h.call("a", rlock, "release", thread=7)[1][0].msg.ref != ref
    _, cmds = h.call("a", rlock, "release", thread=7)
    assert replies(cmds)[("a", ref)].value is True


def test_semaphores_count_and_bounded_refuses_extra_release() -> None:
    h = Harness()
    sem = h.create("a", "BoundedSemaphore", [2])
    assert [only(h.call("a", sem, "acquire", timeout=0)[1]).value for _ in range(3)] == [True, True, False]
    ref, _ = h.call("b", sem, "acquire")
    _, cmds = h.call("a", sem, "release")
    assert replies(cmds)[("b", ref)].value is True
    h.call("a", sem, "release")
    h.call("a", sem, "release")
    assert only(h.call("a", sem, "release")[1]).value[0] == "ValueError"


def test_event_wakes_every_waiter() -> None:
    h = Harness()
    ev = h.create("a", "Event")
    refs = [h.call(p, ev, "wait")[0] for p in ("b", "c")]
    ref_t, _ = h.call("d", ev, "wait", timeout=0.1)
    assert only(h.advance(0.2)).value is False and ref_t
    _, cmds = h.call("a", ev, "set")
    got = replies(cmds)
    assert all(got[(p, r)].value is True for p, r in zip(("b", "c"), refs))
    assert only(h.call("a", ev, "wait")[1]).value is True


def test_condition_wait_releases_the_lock_and_notify_hands_it_back() -> None:
    h = Harness()
    cond = h.create("a", "Condition")
    h.call("a", cond, "acquire")
    ref_wait, cmds = h.call("a", cond, "wait")
    assert cmds == []
    assert only(h.call("b", cond, "acquire")[1]).value is True  # a gave the lock up while waiting
    assert h.call("b", cond, "notify")[1][0].msg.status == ObjStatus.OK
    _, cmds = h.call("b", cond, "release")
    assert replies(cmds)[("a", ref_wait)].value is True  # woken and owns the lock again
    assert only(h.call("c", cond, "acquire", timeout=0)[1]).value is False
    ref_t, _ = h.call("a", cond, "wait", timeout=0.5)
    assert only(h.advance(1)).ref == ref_t  # timed out, got the (free) lock back: False
    assert only(h.call("x", cond, "notify")[1]).value[0] == "RuntimeError"


def test_barrier_releases_all_parties_and_breaks_on_timeout() -> None:
    h = Harness()
    bar = h.create("a", "Barrier", [3, None])
    h.call("a", bar, "wait")
    h.call("b", bar, "wait")
    _, cmds = h.call("c", bar, "wait")
    assert sorted(m.value for m in replies(cmds).values()) == [0, 1, 2]
    h.call("a", bar, "wait", timeout=0.5)
    h.call("b", bar, "wait")
    cmds = h.advance(1)
    assert all(m.value == ["BrokenBarrierError", ""] for m in replies(cmds).values()) and len(cmds) == 2
    assert only(h.call("c", bar, "broken")[1]).value is True
    h.call("c", bar, "reset")
    assert only(h.call("c", bar, "broken")[1]).value is False


def test_value_and_array_keep_opaque_bytes() -> None:
    h = Harness()
    v = h.create("a", "Value", ["i"], [b"pickled-3"])
    assert h.call("a", v, "get")[1][0].frames == [b"pickled-3"]
    h.call("b", v, "set", frames=[b"pickled-4"])
    assert h.call("a", v, "get")[1][0].frames == [b"pickled-4"]
    import array

    arr = h.create("a", "Array", ["i"], [array.array("i", [1, 2, 3, 4]).tobytes()])
    assert only(h.call("a", arr, "len")[1]).value == 4
    assert h.call("a", arr, "getitem", ["i", -1])[1][0].frames == [array.array("i", [4]).tobytes()]
    h.call("a", arr, "setitem", ["s", None, None, 2], frames=[array.array("i", [9, 9]).tobytes()])
    assert h.call("a", arr, "getitem", ["s", None, None, None])[1][0].frames == [array.array("i", [9, 2, 9, 4]).tobytes()]
    assert only(h.call("a", arr, "getitem", ["i", 4])[1]).value[0] == "IndexError"


def test_objects_live_while_held_and_bad_requests_are_answered() -> None:
    h = Harness()
    q = h.create("a", "Queue")
    h.call("b", q, "qsize")  # b now holds it too
    h.send("a", protocol.ObjRelease([q]))
    assert only(h.call("b", q, "qsize")[1]).value == 0
    h.server.peer_gone("b")
    assert only(h.call("c", q, "qsize")[1]).value[0] == "ReferenceError"
    assert only(h.send("a", ObjCreate(5, "Nope"))).value[0] == "TypeError"
    assert only(h.send("a", ObjCall(6, "not an int", "get"))).value[0] == "ReferenceError"  # type: ignore[arg-type]
    lock = h.create("a", "Lock")
    assert only(h.call("a", lock, "no_such_method")[1]).value[0] == "AttributeError"


class FakeLauncher:
    def __init__(self) -> None:
        self.started = 0
        self.code: int | None = None

    def start(self) -> None:
        self.started += 1

    def exitcode(self) -> int | None:
        return self.code

    def stop(self) -> None:
        pass


def test_host_kind_requests_wait_for_the_host_and_are_routed_back() -> None:
    launcher = FakeLauncher()
    h = Harness(launcher)
    assert h.send("a", ObjCreate(9, "host", "dict"), [b"spec"]) == []
    assert launcher.started == 1
    cmds = h.send("host", protocol.HostReady(123))
    (call,) = cmds
    assert call.to == "host" and isinstance(call.msg, protocol.HostCall) and call.frames == [b"spec"]
    tag = call.msg.tag
    cmds = h.send("host", protocol.HostReply(tag, ObjStatus.OK, ["dict", ["get"]], "dict"))
    reply = only(cmds)
    assert (reply.ref, reply.oid, reply.value) == (9, tag, ["dict", ["get"]])
    ref, cmds = h.call("b", tag, "get", frames=[b"args"])
    (fwd,) = cmds
    assert isinstance(fwd.msg, protocol.HostCall) and fwd.msg.oid == tag and fwd.frames == [b"args"]
    cmds = h.send("host", protocol.HostReply(fwd.msg.tag, ObjStatus.RAISED), [b"exc"])
    assert (cmds[0].to, cmds[0].msg.ref, cmds[0].frames) == ("b", ref, [b"exc"])
    # The host dies with a call in flight: that call fails, the object is lost.
    ref, _ = h.call("b", tag, "get")
    launcher.code = -9
    msg = only(h.advance(1))
    assert msg.ref == ref and msg.value[0] == "ReferenceError" and "-9" in msg.value[1]
    assert only(h.call("b", tag, "get")[1]).value[0] == "ReferenceError"
    # A new request starts a new host.
    h.send("a", ObjCreate(10, "host", "list"))
    assert launcher.started == 2


def test_only_the_host_may_reply_and_without_launcher_host_kinds_are_refused() -> None:
    h = Harness()
    assert only(h.send("a", ObjCreate(3, "host", "dict"))).value[0] == "RuntimeError"
    (cmd,) = h.send("a", protocol.HostReply(1, 0))
    assert isinstance(cmd.msg, protocol.Error)
