"""The cluster Pipe kind (dmp_server.pipes) as a state machine: handles, EOF, broken pipes, holders."""

from __future__ import annotations

import pytest

from dmp.wire.protocol import ObjReply, ObjStatus
from tests.managers.test_object_server import Harness, only, replies

pytestmark = pytest.mark.timeout(60)

A, B = 1, 2  # the creator's handles of end 0 and end 1


def ok(reply: ObjReply) -> ObjReply:
    assert reply.status == ObjStatus.OK, reply
    return reply


def failed(reply: ObjReply) -> str:
    assert reply.status == ObjStatus.FAILED, reply
    return str(reply.value[0])


def test_messages_pass_through_untouched_both_ways() -> None:
    h = Harness()
    p = h.create("a", "Pipe", [True])
    ok(only(h.call("a", p, "send", [A], frames=[b"to end 1"])[1]))
    _, cmds = h.call("a", p, "recv", [B, 1])
    assert cmds[0].frames == [b"to end 1"]
    ok(only(h.call("a", p, "send", [B], frames=[b"to end 0"])[1]))
    assert h.call("a", p, "recv", [A, 0])[1][0].frames == [b"to end 0"]


def test_recv_parks_until_a_send_and_poll_wakes_too() -> None:
    h = Harness()
    p = h.create("a", "Pipe", [False])
    poll_ref, cmds = h.call("b", p, "poll", [A, 0], timeout=5.0)
    assert cmds == []
    recv_ref, cmds = h.call("b", p, "recv", [A, 0])
    assert cmds == []
    got = replies(h.call("a", p, "send", [B], frames=[b"m"])[1])
    assert got[("b", poll_ref)].value is True
    assert ok(got[("b", recv_ref)])
    assert [c.frames for c in h.call("a", p, "send", [B], frames=[b"n"])[1]] == [[]]  # nobody waits now


def test_poll_times_out_false() -> None:
    h = Harness()
    p = h.create("a", "Pipe", [True])
    assert only(h.call("a", p, "poll", [A, 0], timeout=0.0)[1]).value is False
    ref, cmds = h.call("a", p, "poll", [A, 0], timeout=1.0)
    assert cmds == []
    msg = only(h.advance(2.0))
    assert msg.ref == ref and msg.value is False


def test_eof_after_the_buffered_messages_once_the_last_handle_closes() -> None:
    h = Harness()
    p = h.create("a", "Pipe", [False])
    ok(only(h.call("a", p, "send", [B], frames=[b"last"])[1]))
    ok(only(h.call("a", p, "close", [B])[1]))
    assert h.call("a", p, "recv", [A, 0])[1][0].frames == [b"last"]
    assert failed(only(h.call("a", p, "recv", [A, 0])[1])) == "EOFError"
    assert only(h.call("a", p, "poll", [A, 0], timeout=0.0)[1]).value is True


def test_a_parked_recv_and_poll_learn_of_the_eof() -> None:
    h = Harness()
    p = h.create("a", "Pipe", [True])
    recv_ref, _ = h.call("b", p, "recv", [A, 0])
    poll_ref, _ = h.call("b", p, "poll", [A, 0], timeout=-1.0)
    got = replies(h.call("a", p, "close", [B])[1])
    assert failed(got[("b", recv_ref)]) == "EOFError"
    assert got[("b", poll_ref)].value is True


def test_a_pickled_end_stays_open_until_its_claimer_lets_go() -> None:
    h = Harness()
    p = h.create("parent", "Pipe", [False])
    dup = ok(only(h.call("parent", p, "dup", [B])[1])).value
    ok(only(h.call("parent", p, "close", [B])[1]))  # the parent closes its own handle at once
    ref, cmds = h.call("parent", p, "recv", [A, 0])
    assert cmds == []  # not EOF: the pickled handle is still open
    mine = ok(only(h.call("child", p, "claim", [dup, 1])[1])).value
    assert mine == dup
    again = ok(only(h.call("child2", p, "claim", [dup, 1])[1])).value  # unpickled twice: a handle each
    assert again != dup
    ok(only(h.call("child2", p, "close", [again])[1]))
    got = replies(h.server.peer_gone("child", crashed=False))
    assert failed(got[("parent", ref)]) == "EOFError"


def test_a_pending_handle_goes_with_the_pickler() -> None:
    h = Harness()
    p = h.create("parent", "Pipe", [False])
    h.call("parent", p, "dup", [B])  # pickled, never unpickled
    ok(only(h.call("parent", p, "close", [B])[1]))
    reader = ok(only(h.call("reader", p, "claim", [ok(only(h.call("parent", p, "dup", [A])[1])).value, 0])[1])).value
    ok(only(h.call("parent", p, "close", [A])[1]))
    ref, cmds = h.call("reader", p, "recv", [reader, 0])
    assert cmds == []
    got = replies(h.server.peer_gone("parent", crashed=True))
    assert failed(got[("reader", ref)]) == "EOFError"


def test_closed_handles_one_way_ends_and_broken_pipes() -> None:
    h = Harness()
    p = h.create("a", "Pipe", [False])
    assert failed(only(h.call("a", p, "send", [A], frames=[b"x"])[1])) == "OSError"  # the reader end
    assert failed(only(h.call("a", p, "recv", [B, 1])[1])) == "OSError"  # the writer end
    assert failed(only(h.call("a", p, "poll", [B, 1], timeout=0.0)[1])) == "OSError"
    ok(only(h.call("a", p, "close", [A])[1]))
    assert failed(only(h.call("a", p, "close", [A])[1])) == "OSError"  # handle is closed
    assert failed(only(h.call("a", p, "send", [B], frames=[b"x"])[1])) == "BrokenPipeError"
    assert failed(only(h.call("a", p, "recv", [77, 0])[1])) == "OSError"
    assert failed(only(h.call("a", p, "send", ["1"], frames=[b"x"])[1])) == "TypeError"
    assert failed(only(h.call("a", p, "claim", [A, 5])[1])) == "ValueError"


def test_closing_a_handle_fails_its_own_parked_recv() -> None:
    h = Harness()
    p = h.create("a", "Pipe", [True])
    ref, _ = h.call("a", p, "recv", [A, 0], thread=1)
    got = replies(h.call("a", p, "close", [A], thread=2)[1])
    assert failed(got[("a", ref)]) == "OSError"


def test_unrecv_puts_a_message_back_first() -> None:
    h = Harness()
    p = h.create("a", "Pipe", [True])
    h.call("a", p, "send", [A], frames=[b"second"])
    ok(only(h.call("a", p, "unrecv", [0, 1], frames=[b"first"])[1]))
    assert h.call("a", p, "recv", [B, 1])[1][0].frames == [b"first"]
    assert h.call("a", p, "recv", [B, 1])[1][0].frames == [b"second"]


def test_the_pipe_is_held_by_the_peers_owning_handles() -> None:
    h = Harness()
    p = h.create("a", "Pipe", [True])
    dup = ok(only(h.call("a", p, "dup", [B])[1])).value
    ok(only(h.call("b", p, "claim", [dup, 1])[1]))
    ok(only(h.call("a", p, "close", [A])[1]))
    ok(only(h.call("a", p, "close", [B])[1]))
    assert "a" not in h.server.entries[p].holders  # a owns no handle now
    ok(only(h.call("b", p, "close", [dup])[1]))
    assert p not in h.server.entries  # nobody owns a handle: the pipe is freed
    assert failed(only(h.call("b", p, "recv", [dup, 1])[1])) == "ReferenceError"


def test_a_recv_answered_after_its_caller_gave_up_is_undone_by_unrecv() -> None:
    from dmp.client.pipes import _UNRECV
    from dmp.wire.protocol import ObjCall

    call = ObjCall(9, 4, "recv", [7, 1], -1.0, 123)
    undo = _UNRECV.call(call, ObjReply(9, ObjStatus.OK))
    assert undo is not None and (undo.oid, undo.method, undo.args, undo.thread) == (4, "unrecv", [0, 1], 123)
    assert _UNRECV.call(call, ObjReply(9, ObjStatus.FAILED, ["EOFError", ""])) is None
