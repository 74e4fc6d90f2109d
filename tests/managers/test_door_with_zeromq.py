"""The manager's one wait (dmp_server.waiting) serves its door and its ZeroMQ socket together.

A real `dmp manager` daemon per test. One client process calls through the door, another
(``DMP_DIRECT_ROUTE=0``) through ZeroMQ, each waking the other's parked calls; door
connections that go away mid-call leave the manager serving.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any

import msgpack
import pytest

import dmp
from dmp.wire import direct, protocol

from .conftest import Daemon, run_script
from .test_door_shortpath import RawDoor

pytestmark = pytest.mark.timeout(90)
ROUNDS = 300


def test_door_and_zeromq_calls_wake_each_other(daemon: Daemon) -> None:
    m = dmp.Manager(address=daemon.address)
    there, back = m.Queue(), m.Queue()
    code = f"""
import pickle
there, back = pickle.loads(bytes.fromhex({pickle.dumps((there, back)).hex()!r}))
for i in range({ROUNDS}):
    there.put(i)
    assert back.get(timeout=30) == i
print("ok", flush=True)
"""
    done: dict[str, Any] = {}
    child = threading.Thread(
        target=lambda: done.update(result=run_script(code, {**daemon.env, "DMP_DIRECT_ROUTE": "0"}, timeout=80))
    )
    child.start()
    try:
        for i in range(ROUNDS):  # through the door: parked until the child's put over ZeroMQ, and back
            assert there.get(timeout=30) == i
            back.put(i)
    finally:
        child.join(85)
    result = done["result"]
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_door_connections_gone_mid_call_leave_the_manager_serving(daemon: Daemon) -> None:
    m = dmp.Manager(address=daemon.address)
    q, idle = m.Queue(), m.Queue()
    half = RawDoor(daemon.address)  # half a request, then gone
    header = msgpack.packb([protocol.PROTOCOL_VERSION, protocol.ObjCall.TYPE, [], 1, q._token.id, "qsize", [], -1.0, 7])  # type: ignore[attr-defined]
    half.sock.sendall((direct.PREFIX_STRUCT.pack(len(header), 0) + header)[:7])
    parked = RawDoor(daemon.address)  # a get parked on a queue nobody feeds, then gone
    header = msgpack.packb([protocol.PROTOCOL_VERSION, protocol.ObjCall.TYPE, [], 2, idle._token.id, "get", [], -1.0, 7])  # type: ignore[attr-defined]
    parked.sock.sendall(direct.PREFIX_STRUCT.pack(len(header), 0) + header)
    assert q.qsize() == 0
    half.close()
    parked.close()
    for i in range(100):
        q.put(i)
        assert q.get(timeout=10) == i
    idle.put("x")  # the gone connection's parked get may take it: the manager must not fail either way
    assert m.Queue().qsize() == 0
