"""ObjCancel in the ObjectServer and the unget that undoes a late get: state machines, no I/O."""

from __future__ import annotations

import pytest
from dmp_server import objects

from dmp.wire.protocol import ObjCancel, ObjStatus

from .test_object_server import Harness, only, replies

pytestmark = pytest.mark.timeout(60)


def test_cancelled_get_takes_no_item_and_the_next_getter_has_it() -> None:
    h = Harness()
    q = h.create("a", "Queue")
    ref_a, _ = h.call("a", q, "get")
    ref_b, _ = h.call("b", q, "get")
    assert h.send("a", ObjCancel(ref_a)) == []  # a cancel is never answered
    _, cmds = h.call("c", q, "put", frames=[b"x"])
    got = replies(cmds)
    assert ("a", ref_a) not in got
    assert got[("b", ref_b)].status == ObjStatus.OK
    assert [c.frames for c in cmds if c.to == "b"] == [[b"x"]]


def test_cancelled_get_leaves_the_item_in_the_queue_for_a_later_get() -> None:
    h = Harness()
    q = h.create("a", "Queue")
    ref, _ = h.call("a", q, "get", timeout=5.0)
    h.send("a", ObjCancel(ref))
    assert h.server.next_deadline() is None  # its deadline is gone with it
    h.call("a", q, "put", frames=[b"x"])
    assert h.advance(10.0) == []  # no Empty for the cancelled get either
    _, cmds = h.call("a", q, "get", timeout=0)
    assert [c.frames for c in cmds] == [[b"x"]]


def test_cancelled_blocking_put_does_not_go_in() -> None:
    h = Harness()
    q = h.create("a", "Queue", [1])
    h.call("a", q, "put", frames=[b"1"])
    ref, cmds = h.call("b", q, "put", frames=[b"2"])
    assert cmds == []
    h.send("b", ObjCancel(ref))
    assert [c.frames for c in h.call("a", q, "get")[1]] == [[b"1"]]
    assert only(h.call("a", q, "get", timeout=0)[1]).value == ["Empty", ""]


def test_cancelled_lock_waiter_is_skipped_when_the_lock_is_released() -> None:
    h = Harness()
    lock = h.create("a", "Lock")
    h.call("a", lock, "acquire")
    ref_b, _ = h.call("b", lock, "acquire")
    ref_c, _ = h.call("c", lock, "acquire")
    h.send("b", ObjCancel(ref_b))
    _, cmds = h.call("a", lock, "release")
    got = replies(cmds)
    assert ("b", ref_b) not in got and got[("c", ref_c)].value is True
    h.call("c", lock, "release")
    assert only(h.call("d", lock, "acquire", timeout=0)[1]).value is True  # free: b never took it


def test_cancelled_semaphore_event_and_join_waiters_are_never_answered() -> None:
    h = Harness()
    sem, ev, jq = h.create("a", "Semaphore", [0]), h.create("a", "Event"), h.create("a", "JoinableQueue")
    h.call("a", jq, "put", frames=[b"1"])
    refs = [h.call("b", sem, "acquire")[0], h.call("b", ev, "wait")[0], h.call("b", jq, "join")[0]]
    for ref in refs:
        h.send("b", ObjCancel(ref))
    cmds = h.call("a", sem, "release")[1] + h.call("a", ev, "set")[1]
    cmds += h.call("a", jq, "get")[1] + h.call("a", jq, "task_done")[1]
    assert all(c.to == "a" for c in cmds)
    assert only(h.call("a", sem, "get_value")[1]).value == 1  # the count was not taken


def test_cancelled_condition_wait_neither_eats_a_notify_nor_retakes_the_lock() -> None:
    h = Harness()
    cond = h.create("a", "Condition")
    h.call("b", cond, "acquire", thread=1)
    ref_b, _ = h.call("b", cond, "wait", thread=1)
    h.call("c", cond, "acquire", thread=1)
    ref_c, _ = h.call("c", cond, "wait", thread=1)
    h.send("b", ObjCancel(ref_b))
    h.call("a", cond, "acquire", thread=1)
    h.call("a", cond, "notify", [1], thread=1)  # goes to c, the one still waiting
    _, cmds = h.call("a", cond, "release", thread=1)
    assert replies(cmds)[("c", ref_c)].value is True
    h.call("c", cond, "release", thread=1)
    assert only(h.call("b", cond, "release", thread=1)[1]).value[0] == "RuntimeError"  # b does not hold it


def test_cancelled_barrier_waiter_leaves_and_the_others_wait_on() -> None:
    h = Harness()
    bar = h.create("a", "Barrier", [2])
    ref_b, _ = h.call("b", bar, "wait", timeout=1.0)
    h.send("b", ObjCancel(ref_b))
    assert only(h.call("a", bar, "n_waiting")[1]).value == 0
    assert h.advance(2.0) == []  # its timeout does not break the barrier
    ref_c, _ = h.call("c", bar, "wait")
    ref_d, cmds = h.call("d", bar, "wait")
    assert set(replies(cmds)) == {("c", ref_c), ("d", ref_d)}  # nothing for b
    assert only(h.call("a", bar, "broken")[1]).value is False


def test_cancel_of_unknown_answered_foreign_or_malformed_refs_is_ignored() -> None:
    h = Harness()
    q = h.create("a", "Queue")
    h.call("a", q, "put", frames=[b"1"])
    answered, _ = h.call("a", q, "get")
    ref, _ = h.call("a", q, "get")
    for peer, bad in (("a", answered), ("a", 999), ("b", ref), ("a", "x"), ("a", None), ("a", [ref])):
        assert h.send(peer, ObjCancel(bad)) == []  # type: ignore[arg-type]
    _, cmds = h.call("b", q, "put", frames=[b"2"])
    assert replies(cmds)[("a", ref)].status == ObjStatus.OK  # b could not cancel a's request
    h.send("a", ObjCancel(ref))  # answered meanwhile: too late, ignored
    assert h.server.parked == {}


def test_parked_map_forgets_expired_answered_and_departed_requests() -> None:
    h = Harness()
    q = h.create("a", "Queue")
    ref, _ = h.call("a", q, "get", timeout=1.0)
    assert ("a", ref) in h.server.parked
    h.advance(2.0)  # expired
    assert h.server.parked == {}
    h.call("b", q, "get")
    h.call("c", q, "get")
    h.server.peer_gone("b")
    assert [key[0] for key in h.server.parked] == ["c"]


def test_parked_map_is_swept_of_answered_requests_as_it_grows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objects, "PARKED_SWEEP_MIN", 8)
    h = Harness()
    h.server._sweep_at = 8
    q = h.create("a", "Queue")
    for _ in range(100):  # parked, then answered by a put: never expired, never cancelled
        h.call("a", q, "get")
        h.call("b", q, "put", frames=[b"x"])
    assert len(h.server.parked) < 8
    for _ in range(20):  # requests really parked are all kept
        h.call("c", q, "get")
    assert sum(1 for _, req in h.server.parked.values() if not req.done) == 20
    assert len(h.server.parked) <= 40


def test_unget_puts_the_item_back_first_past_maxsize_and_uncounted() -> None:
    h = Harness()
    q = h.create("a", "JoinableQueue", [1])
    h.call("a", q, "put", frames=[b"1"])
    h.call("a", q, "get")
    h.call("a", q, "put", frames=[b"2"])
    assert only(h.call("a", q, "unget", frames=[b"1"])[1]).status == ObjStatus.OK  # full, yet back in
    assert [c.frames for c in h.call("a", q, "get")[1]] == [[b"1"]]
    assert [c.frames for c in h.call("a", q, "get")[1]] == [[b"2"]]
    h.call("a", q, "task_done")
    ref, cmds = h.call("b", q, "join")
    assert cmds == []
    _, cmds = h.call("a", q, "task_done")  # two puts, two task_done: joined (unget counted nothing)
    assert ("b", ref) in replies(cmds)


def test_unget_hands_the_item_to_a_parked_getter() -> None:
    h = Harness()
    q = h.create("a", "Queue")
    ref, _ = h.call("b", q, "get")
    _, cmds = h.call("a", q, "unget", frames=[b"x"])
    assert replies(cmds)[("b", ref)].status == ObjStatus.OK
