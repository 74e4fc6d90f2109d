"""The direct route (dmp.wire.direct): dict/list/Namespace calls straight to the object host.

Real manager processes, real object hosts, real unix sockets: the route is
used once granted, a wrong key is refused on its endpoint, what the manager
must see still goes through it, and a host that dies gives an error, not a hang.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

import dmp
from dmp.client import directlink, proxylink
from dmp.wire import direct, protocol
from tests.daemons import Daemons, alive, children, wait_for


def _route(proxy: object) -> str:
    token = proxy._token  # type: ignore[attr-defined]
    return proxylink.existing(token.address).direct[token.id]  # type: ignore[union-attr]


def _host_pid(manager: dmp.managers.SyncManager) -> int:
    kids = children(manager._process.pid)  # type: ignore[attr-defined]
    assert len(kids) == 1, kids
    return kids[0]


def test_granted_calls_go_direct_and_agree(manager: dmp.managers.SyncManager) -> None:
    d = manager.dict()
    address = _route(d)  # granted with the create
    assert address.startswith(direct.PREFIX)
    expected: dict[int, int] = {}
    for i in range(100):
        d[i % 7] = expected[i % 7] = i
    assert d[3] == expected[3] and len(d) == 7 and dict(d) == expected
    assert address in directlink._local.socks  # this thread holds a connection to that host
    with pytest.raises(KeyError):
        d["missing"]
    lst = manager.list([1, 2])
    lst.append(3)
    assert lst[:] == [1, 2, 3] and _route(lst) == address
    ns = manager.Namespace()
    ns.x = 5
    assert ns.x == 5


def test_what_the_manager_must_see_goes_through_it(manager: dmp.managers.SyncManager) -> None:
    d = manager.dict()
    inner = manager.dict({"a": 1})
    d["inner"] = inner  # a proxy in the arguments: the host keeps it, the manager records the hold
    oid = inner._token.id  # type: ignore[attr-defined]
    del inner
    assert d["inner"]["a"] == 1  # still alive: the host holds it
    d["x"] = 1
    assert sorted(iter(d)) == [
        "inner",
        "x",
    ]  # __iter__ makes an Iterator object: through the manager
    assert oid


def test_proxy_in_a_forked_child(manager: dmp.managers.SyncManager) -> None:
    d = manager.dict()
    d["n"] = 0
    ctx = dmp.get_context("fork") if hasattr(dmp, "get_context") else None
    import multiprocessing

    def bump(proxy: object) -> None:
        for _ in range(50):
            proxy["n"] = proxy["n"] + 1  # type: ignore[index]

    proc = (ctx or multiprocessing.get_context("fork")).Process(target=bump, args=(d,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert d["n"] == 50


def test_wrong_key_is_refused_on_the_direct_endpoint(manager: dmp.managers.SyncManager) -> None:
    d = manager.dict()
    d["k"] = 1
    address = _route(d)
    with pytest.raises(direct.DirectError, match="key proof"):
        direct.connect(address, b"not the key")
    # No key at all is no better.
    with pytest.raises(direct.DirectError, match="requires an authkey"):
        direct.connect(address, None)
    # A stranger that says nothing is dropped after the handshake timeout, and holds nothing up.
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        idle.connect(direct.sockaddr(address))
        assert d["k"] == 1
    finally:
        idle.close()
    # The right key still works, and a request on it is answered.
    key = proxylink.existing(d._token.address).key  # type: ignore[attr-defined, union-attr]
    sock = direct.connect(address, key)
    try:
        frames = dmp.serialization.dumps((("k",), {}))
        reply, out = direct.request(
            sock, direct.Reader(), protocol.ObjCall(0, d._token.id, "__getitem__"), frames
        )  # type: ignore[attr-defined]
        assert reply.status == protocol.ObjStatus.OK and dmp.serialization.loads(out) == 1
        # An object this connection was never granted, or a method that makes one: not run.
        reply, _ = direct.request(
            sock, direct.Reader(), protocol.ObjCall(0, 10**9, "__getitem__"), frames
        )
        assert reply.status == protocol.ObjStatus.REDIRECT
        reply, _ = direct.request(
            sock,
            direct.Reader(),
            protocol.ObjCall(0, d._token.id, "__iter__"),
            dmp.serialization.dumps(((), {})),
        )  # type: ignore[attr-defined]
        assert reply.status == protocol.ObjStatus.REDIRECT
    finally:
        sock.close()


def test_garbage_on_the_direct_endpoint_drops_only_that_connection(
    manager: dmp.managers.SyncManager,
) -> None:
    d = manager.dict()
    d["k"] = 2
    address = _route(d)
    key = proxylink.existing(d._token.address).key  # type: ignore[attr-defined, union-attr]
    sock = direct.connect(address, key)
    try:
        sock.sendall(b"\xff" * 12 + b"garbage")  # a header length over the limit
        sock.settimeout(10)
        assert sock.recv(1) == b""  # the host closed it
    finally:
        sock.close()
    assert d["k"] == 2


def test_host_death_is_an_error_not_a_hang(manager: dmp.managers.SyncManager) -> None:
    d = manager.dict()
    d["k"] = 1
    assert d["k"] == 1  # connected
    pid = _host_pid(manager)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), 10, "the object host to die")
    with pytest.raises(ReferenceError, match="lost"):
        d["k"]
    with pytest.raises(
        ReferenceError, match="lost"
    ):  # later calls: through the manager, which knows
        d["k"]
    fresh = manager.dict()  # a new host is started for new objects
    fresh["a"] = 1
    assert fresh["a"] == 1


def test_route_off_by_environment(tmp_path: Path) -> None:
    env = dict(os.environ, DMP_DIRECT_ROUTE="0")
    code = (
        "import dmp\nfrom dmp.client import proxylink\n"
        "with dmp.Manager() as m:\n"
        "    d = m.dict(); d[1] = 2; assert d[1] == 2\n"
        "    assert not proxylink.existing(d._token.address).direct\n"
        "print('ok')\n"
    )
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_cluster_daemon_grants_the_route_on_loopback(tmp_path: Path) -> None:
    d = Daemons(tmp_path / "daemon", authkey=b"direct-route key")
    d.start(nodes=0)
    try:
        m = dmp.Manager(address=d.address, authkey=b"direct-route key")
        shared = m.dict()
        shared["x"] = 1
        assert shared["x"] == 1
        assert _route(shared).startswith(direct.PREFIX)
        with pytest.raises(direct.DirectError, match="key proof"):
            direct.connect(_route(shared), b"wrong")
        assert shared["x"] == 1
    finally:
        d.stop()


def test_direct_connections_close_quietly_at_thread_and_process_exit(tmp_path: Path) -> None:
    """A thread's direct connection is closed when the thread ends, and the main
    thread's at exit: no ResourceWarning for an open socket under ``-X dev``."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "quiet.py"
    script.write_text(textwrap.dedent("""
        import threading
        import dmp
        if __name__ == "__main__":
            m = dmp.Manager()
            d = m.dict()
            d[1] = 2
            t = threading.Thread(target=d.__setitem__, args=(3, 4))
            t.start()
            t.join()
            print(sorted(d.items()))
            m.shutdown()
    """))
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(root / "server")]))
    out = subprocess.run([sys.executable, "-X", "dev", str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[(1, 2), (3, 4)]"
    assert "ResourceWarning" not in out.stderr, out.stderr
