"""Each role may send only its own messages: the manager refuses the rest with
a clear Error, keeps the sender's session, and keeps serving everyone.

A raw DEALER speaks to a local pool's embedded manager; the catalogue's
SENDERS say what each role may send, and routing checks them before it
dispatches by type.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq

import dmp
from dmp import serialization
from dmp.wire import protocol
from tests.rawpeer import raw_dealer, reply, send

pytestmark = pytest.mark.timeout(30)


def square(x: int) -> int:
    return x * x


@pytest.fixture(scope="module")
def pool() -> Iterator[dmp.Pool]:
    p = dmp.Pool(2)
    try:
        yield p
    finally:
        p.terminate()


def _join(sock: zmq.Socket[Any], role: str) -> None:
    send(sock, protocol.Hello(role, f"raw-{role}", "h", 1, version=protocol.software_version()))
    welcome = reply(sock)
    assert isinstance(welcome, protocol.Welcome), welcome


# (role, a message of some other role's, or of the manager's)
WRONG = [
    ("client", protocol.TaskDone([[1, 0, 0, 0, 0.0, ""]])),
    ("client", protocol.TaskOutput(1, "stdout", "x")),
    ("client", protocol.TaskStarted(1, 2)),
    ("client", protocol.WorkerExited("w", 1, -9)),
    ("client", protocol.WorkerSpared("w", 1)),
    ("client", protocol.JobResults([[1, 0, 0, 0, ""]])),
    ("client", protocol.Dispatch()),
    ("client", protocol.Welcome("p", 1.0)),
    ("node", protocol.Submit(1, [])),
    ("node", protocol.TaskDone([])),
    ("node", protocol.StatusRequest()),
    ("node", protocol.ObjCreate(1, "Queue")),
    ("status", protocol.DefineJob(1, 0)),
    ("status", protocol.WorkerExited("w", 1, -9)),
]


@pytest.mark.parametrize("role, msg", WRONG, ids=[f"{r}-{type(m).__name__}" for r, m in WRONG])
def test_a_message_the_role_never_sends_is_refused_by_name(pool: dmp.Pool, role: str, msg: protocol.Message) -> None:
    assert role not in protocol.message_types()[type(msg).__name__].SENDERS
    with raw_dealer(pool) as sock:
        _join(sock, role)
        send(sock, msg)
        got = reply(sock)
        assert isinstance(got, protocol.Error) and got.code == protocol.ErrorCode.BAD_MESSAGE
        assert got.text == f"a {role} may not send {type(msg).__name__}"
        if role in ("client", "status"):  # still served in its session
            send(sock, protocol.StatusRequest())
            assert isinstance(reply(sock), protocol.StatusReply)
        send(sock, protocol.Bye("done"))
    assert pool.map(square, range(10)) == [x * x for x in range(10)]


def test_a_client_s_own_messages_are_still_served(pool: dmp.Pool) -> None:
    """The check lets through what the role does send (a job, start to end)."""
    with raw_dealer(pool) as sock:
        _join(sock, "client")
        send(sock, protocol.DefineJob(1, 0))
        task = serialization.dumps((square, (7,), {}))
        sizes, physical = protocol.pack(task)
        sock.send_multipart([b"", protocol.encode(protocol.Submit(1, [[0, len(task)]]), sizes), *physical])
        got = reply(sock)
        assert isinstance(got, protocol.JobResults)
        assert [item[:3] for item in got.items] == [[1, 0, protocol.Status.OK]] and len(got.items[0]) == 5
        send(sock, protocol.EndJob(1))
        send(sock, protocol.Bye("done"))


@pytest.mark.parametrize("role, field, value", [
    ("client", "node", "node1"),
    ("client", "resources", {"GPU": 1}),
    ("node", "max_workers", 4),
    ("status", "max_tasks", 10),
])
def test_a_hello_with_another_role_s_field_is_refused(pool: dmp.Pool, role: str, field: str, value: Any) -> None:
    owner = protocol.Hello.ROLE_FIELDS[field]
    with raw_dealer(pool) as sock:
        send(sock, protocol.Hello(role, "mixed", "h", 1, version=protocol.software_version(), **{field: value}))
        got = reply(sock)
        assert isinstance(got, protocol.Error) and got.code == protocol.ErrorCode.BAD_MESSAGE
        assert got.text == f"Hello.{field} is a {owner}'s; a {role} leaves it at its default"
    assert pool.map(square, range(10)) == [x * x for x in range(10)]
