"""A worker process's own client connections (its tasks' proxies, Pipe ends) end with the worker."""

from __future__ import annotations

import pytest
from dmp_server.objects import ObjectServer
from dmp_server.peers import Departures, Peer, Peers
from dmp_server.scheduler import Scheduler, Send

from dmp.wire.protocol import ObjCall, ObjCreate, ObjReply, ObjStatus, Role

pytestmark = pytest.mark.timeout(30)


def _peers() -> Peers:
    peers = Peers(Scheduler(), ObjectServer(), 1.0)
    peers.scheduler.add_node("n", {})
    for pid, host, role in [(42, "h", Role.WORKER), (42, "h", Role.CLIENT), (43, "h", Role.CLIENT), (42, "other", Role.CLIENT)]:
        name = f"{role}-{host}-{pid}"
        peers.by_id[name] = Peer(name, None, role, name, host, pid, "n", 1, 0.0)
        if role == Role.WORKER:
            peers.scheduler.add_worker(name, "n", pid, 0)
        else:
            peers.scheduler.add_client(name)
    return peers


@pytest.mark.parametrize("exitcode", [0, 3, -9])
def test_a_worker_exit_ends_the_clients_of_that_process_only(exitcode: int) -> None:
    peers = _peers()
    out = Departures()
    peers.worker_exit("worker-h-42", exitcode, -1 if exitcode == 0 else 0, 0.0, out)
    assert "client-h-42" not in peers.by_id
    assert {"client-h-43", "client-other-42"} <= set(peers.by_id)
    assert [p.id for p in out.gone] == ["client-h-42"]


def test_a_pipe_end_held_by_a_dead_workers_client_closes() -> None:
    peers = _peers()
    shared = peers.shared
    (made,) = shared.handle("client-h-43", ObjCreate(1, "Pipe", "Pipe", [False]), [], 0.0)
    assert isinstance(made, Send) and isinstance(made.msg, ObjReply)
    oid = made.msg.oid
    (dup,) = shared.handle("client-h-43", ObjCall(2, oid, "dup", [2]), [], 0.0)
    assert isinstance(dup, Send) and isinstance(dup.msg, ObjReply)
    shared.handle("client-h-42", ObjCall(3, oid, "claim", [dup.msg.value, 1]), [], 0.0)  # the task took the writer
    shared.handle("client-h-43", ObjCall(4, oid, "close", [2]), [], 0.0)
    assert shared.handle("client-h-43", ObjCall(5, oid, "recv", [1, 0]), [], 0.0) == []  # waits: a writer lives
    out = Departures()
    peers.worker_exit("worker-h-42", -9, 0, 0.0, out)
    eof = [c for c in out.cmds if isinstance(c, Send) and isinstance(c.msg, ObjReply) and c.msg.ref == 5]
    assert len(eof) == 1 and eof[0].msg.status == ObjStatus.FAILED and eof[0].msg.value[0] == "EOFError"  # type: ignore[attr-defined]
