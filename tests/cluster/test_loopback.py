"""Cluster mode on loopback: a real manager daemon and two worker node daemons."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest

import dmp
from tests.byvalue import pickled_by_value
from tests.daemons import start_cluster, unused_address, wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module", autouse=True)
def _functions_by_value() -> Iterator[None]:
    """This module's functions travel by value (nodes cannot import tests/), only while its tests run."""
    with pickled_by_value(sys.modules[__name__]):
        yield


def where(x: int) -> tuple[int, str, int, str]:
    import multiprocessing
    import os
    import socket

    return x * x, socket.gethostname(), os.getpid(), multiprocessing.current_process().name


def test_pool_map_spreads_over_both_nodes(cluster) -> None:
    with dmp.Pool(address=cluster.address) as pool:
        results = pool.map(where, range(200), chunksize=1)
    assert [r[0] for r in results] == [x * x for x in range(200)]
    assert len({r[2] for r in results}) >= 3  # pids on both nodes (2 workers each)
    # Worker names say their node, so they are unique across nodes: one name per process.
    names = {r[2]: r[3] for r in results}
    assert len(set(names.values())) == len(names), names
    assert all(re.fullmatch(r"dmp-worker-node[12]-\d+", n) for n in names.values()), names
    status = cluster.wait_slots(4)
    done = {n["name"]: n["tasks_done"] for n in status["nodes"]}
    assert set(done) == {"node1", "node2"} and all(v > 0 for v in done.values()), done


def test_lambda_closure_and_exception_travel(cluster) -> None:
    k = 10
    with dmp.Pool(address=cluster.address) as pool:
        assert pool.map(lambda x: x + k, [1, 2, 3]) == [11, 12, 13]
        assert sorted(pool.imap_unordered(lambda x: -x, range(5))) == [-4, -3, -2, -1, 0]
        with pytest.raises(ZeroDivisionError) as info:
            pool.apply(lambda: 1 / 0)
        assert "ZeroDivisionError" in str(info.value.__cause__)


def test_a_remote_traceback_says_where_and_shows_the_callers_source(cluster) -> None:
    def divide(x: int) -> float:
        half = x / 2
        return half / 0  # the line the traceback must show

    with dmp.Pool(address=cluster.address) as pool, pytest.raises(ZeroDivisionError) as info:
        pool.apply(divide, (4,))
    remote = str(info.value.__cause__)
    assert re.search(r"Raised in node 'node[12]' \(.+\), pid \d+, task \d+", remote), remote
    assert f'File "{__file__}"' in remote and "<dynamic-code>" not in remote, remote
    assert "return half / 0  # the line the traceback must show" in remote, remote


def test_unchanged_stdlib_script_runs_under_dmp_address(cluster, tmp_path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import os
        import dmp as multiprocessing

        def f(x):
            return x * x, os.getpid()

        if __name__ == "__main__":
            with multiprocessing.Pool() as p:
                out = p.map(f, range(20))
            print([v for v, _ in out])
            print("parent", os.getpid(), "workers", sorted({pid for _, pid in out}))
    """))
    env = dict(cluster.env, DMP_ADDRESS=cluster.address)
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == str([x * x for x in range(20)])
    parent = int(lines[1].split()[1])
    assert str(parent) not in lines[1].split("workers", 1)[1]


def test_two_clients_share_the_cluster(cluster) -> None:
    with dmp.Pool(address=cluster.address) as a, dmp.Pool(address=cluster.address) as b:
        ra = a.map_async(where, range(300), chunksize=1)
        rb = b.map_async(where, range(50), chunksize=1)
        assert [r[0] for r in rb.get(60)] == [x * x for x in range(50)]
        assert [r[0] for r in ra.get(60)] == [x * x for x in range(300)]


def test_worker_node_killed_mid_map_completes_on_the_other(cluster) -> None:
    import time

    def slow(x: int) -> int:
        time.sleep(0.02)
        return x

    with dmp.Pool(address=cluster.address) as pool:
        result = pool.map_async(slow, range(200), chunksize=1)
        wait_for(lambda: (s := cluster.status()) is not None and s["busy"] >= 4, 60, "every slot busy")
        cluster.nodes["node1"].kill()
        assert sorted(result.get(60)) == list(range(200))


def test_no_manager_raises_manager_unavailable() -> None:
    from dmp.client.link import RemoteLink
    from dmp.client.session import Session

    with unused_address() as address, pytest.raises(dmp.ManagerUnavailableError):
        RemoteLink(Session(), address, None, timeout=1.0)


def test_wrong_authkey_is_refused_and_the_manager_keeps_serving() -> None:
    c = start_cluster(nodes=1, authkey=b"right key")
    try:
        with pytest.raises((dmp.AuthenticationError, dmp.ManagerUnavailableError)):
            dmp.Pool(address=c.address, authkey=b"wrong key")
        with dmp.Pool(address=c.address, authkey=b"right key") as pool:
            assert pool.map(where, range(10))[3][0] == 9
    finally:
        c.stop()


def flip(a: Any) -> Any:
    return a[::-1].copy()


def test_large_arrays_cross_a_keyed_cluster_both_ways_intact() -> None:
    """Large frames are signed by their digest; the manager re-signs what it forwards."""
    np = pytest.importorskip("numpy")
    c = start_cluster(nodes=1, authkey=b"digest key")
    try:
        arrays = [np.random.default_rng(i).integers(0, 256, 3 * 1024 * 1024 + i, dtype=np.uint8) for i in range(4)]
        with dmp.Pool(address=c.address, authkey=b"digest key") as pool:
            out = pool.map(flip, arrays, chunksize=1)
        assert all(np.array_equal(a[::-1], b) for a, b in zip(arrays, out))
    finally:
        c.stop()


def test_manager_refuses_a_public_bind_without_authkey() -> None:
    env = dict(os.environ)
    env.pop("DMP_AUTHKEY", None)
    out = subprocess.run(
        [sys.executable, "-m", "dmp", "manager", "--bind", "tcp://0.0.0.0:0"],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2
    assert "authkey" in out.stderr and "--authkey-file" in out.stderr


def shout(x: int) -> int:
    print(f"task {x} says hi")
    return x


def test_task_output_reaches_the_client_prefixed_with_node_and_pid(cluster, capfd) -> None:
    with dmp.Pool(address=cluster.address) as pool:
        assert pool.map(shout, range(3)) == [0, 1, 2]
    out = capfd.readouterr().out
    for x in range(3):
        line = next(ln for ln in out.splitlines() if ln.endswith(f"task {x} says hi"))
        assert line.startswith("(node") and "pid=" in line


_seen_init: list[str] = []


def remember(token: str) -> None:
    _seen_init.append(token)


def initialized() -> list[str]:
    return list(_seen_init)


def pid(_: object = None) -> int:
    return os.getpid()


def test_initializer_and_maxtasksperchild_on_nodes(cluster) -> None:
    with dmp.Pool(address=cluster.address, initializer=remember, initargs=("tok",)) as pool:
        # Every task, of any call, sees what the initializer did (once per worker), though
        # the functions travel by value, each call's pickled apart from the initializer.
        assert all(seen == ["tok"] for seen in pool.map(lambda _: initialized(), range(20), chunksize=1))
        assert all(seen == ["tok"] for seen in pool.map(lambda _: initialized(), range(20), chunksize=1))
        assert all(r.get(30) == ["tok"] for r in [pool.apply_async(initialized) for _ in range(8)])
    with dmp.Pool(address=cluster.address, maxtasksperchild=1) as pool:
        pids = pool.map(pid, range(12), chunksize=1)
    assert len(set(pids)) == 12  # every task ran in a fresh worker process


def put_pid(q) -> None:
    q.put(os.getpid())


def test_a_pools_initializer_runs_on_free_workers_when_the_pool_starts(cluster) -> None:
    q = dmp.Manager(address=cluster.address).Queue()
    cluster.wait_slots(4)
    with dmp.Pool(2, address=cluster.address, initializer=put_pid, initargs=(q,)):
        # No task submitted: two free workers ran it, one each (the slots the pool may use).
        assert len({q.get(timeout=30), q.get(timeout=30)}) == 2


def test_missing_module_error_names_module_and_node(cluster) -> None:
    with dmp.Pool(address=cluster.address) as pool, pytest.raises(ModuleNotFoundError) as info:
        pool.apply(lambda: __import__("surely_not_installed_here"))
    assert "surely_not_installed_here" in str(info.value) and "node" in str(info.value)


def test_nodes_rejoin_a_restarted_manager(cluster) -> None:
    cluster.restart_manager()
    cluster.wait_slots(4)  # the nodes came back by themselves
    with dmp.Pool(address=cluster.address) as pool:
        assert pool.map(where, range(10))[9][0] == 81


def test_in_flight_work_fails_fast_when_the_manager_goes_away(cluster) -> None:
    import time

    with dmp.Pool(address=cluster.address) as pool:
        result = pool.apply_async(time.sleep, (30,))
        assert cluster.manager is not None
        cluster.manager.terminate()
        with pytest.raises(dmp.ManagerUnavailableError):
            result.get(20)


def greet_and_exit(name: str) -> None:
    import sys

    print("hello", name)
    sys.exit(3)


def test_remote_process_runs_on_a_node(cluster, capfd) -> None:
    import signal
    import time
    from multiprocessing.connection import wait

    p = dmp.Process(target=greet_and_exit, args=("bob",), address=cluster.address)
    p.start()
    assert p.pid is not None and p.pid != os.getpid()
    p.join(30)
    assert p.exitcode == 3 and not p.is_alive()
    lines = [ln for ln in capfd.readouterr().out.splitlines() if ln.endswith("hello bob")]
    assert len(lines) == 1 and f"pid={p.pid}" in lines[0]  # ran once, output forwarded

    class Sleeper(dmp.Process):
        def run(self) -> None:
            time.sleep(30)

    s = Sleeper(address=cluster.address)
    s.start()
    assert s.is_alive()
    s.terminate()
    s.join(20)
    assert s.exitcode == -signal.SIGTERM

    k = dmp.Process(target=time.sleep, args=(30,), address=cluster.address)
    k.start()
    k.kill()
    assert wait([k.sentinel], 20) == [k.sentinel]
    assert k.exitcode == -signal.SIGKILL

    e = dmp.Process(target=lambda: 1 / 0, address=cluster.address)
    e.start()
    e.join(20)
    assert e.exitcode == 1
    assert "ZeroDivisionError" in capfd.readouterr().err


def size_of(b: bytes) -> int:
    return len(b)


def test_limits_give_clear_errors_and_spare_everyone_else() -> None:
    c = start_cluster(nodes=1, manager_args=("--max-message-mb", "1", "--max-clients", "1"))
    try:
        with dmp.Pool(address=c.address) as pool:
            with pytest.raises(dmp.errors.MessageTooLargeError, match="limit"):
                pool.apply(size_of, (b"x" * (2 << 20),))
            with pytest.raises(dmp.errors.MessageTooLargeError):
                pool.map(size_of, [b"a", b"x" * (2 << 20), b"bc"], chunksize=1)
            assert pool.map(size_of, [b"a", b"bc"] * 50) == [1, 2] * 50  # the pool goes on
            with pytest.raises(dmp.ManagerUnavailableError, match="limit of 1 clients"):
                dmp.Pool(address=c.address)
        with dmp.Pool(address=c.address) as pool:  # the slot is free again
            assert pool.apply(size_of, (b"abc",)) == 3
    finally:
        c.stop()


def test_a_keyed_manager_says_why_it_refuses_a_hello() -> None:
    """A refused Hello is answered before any session (unsigned): the client with the right
    key reports the manager's reason, not "does it have the authkey?"."""
    c = start_cluster(nodes=1, processes=1, authkey=b"limit key", manager_args=("--max-clients", "1"))
    try:
        with dmp.Pool(address=c.address, authkey=b"limit key") as pool:
            with pytest.raises(dmp.ManagerUnavailableError, match="limit of 1 clients"):
                dmp.Pool(address=c.address, authkey=b"limit key")
            assert pool.apply(size_of, (b"ab",)) == 2
        with pytest.raises(dmp.AuthenticationError):
            dmp.Pool(address=c.address, authkey=b"another key")
    finally:
        c.stop()


def test_replayed_and_forged_messages_are_refused() -> None:
    import zmq

    from dmp.wire import protocol, transport

    key = b"replay key"
    c = start_cluster(nodes=1, authkey=key)
    try:
        def connect() -> transport.Channel:
            sock = transport.make_socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 5000)
            sock.connect(c.address)
            return transport.Channel(sock, key)

        def reply_to(sock: zmq.Socket, parts: list[bytes]) -> protocol.Message:
            sock.send_multipart(parts)
            msg, _ = protocol.decode(sock.recv_multipart()[1])
            return msg

        legit = connect()
        legit.send(protocol.Hello(protocol.Role.CLIENT, "legit", "h", 1))
        _, welcome, _ = legit.recv()
        assert isinstance(welcome, protocol.Welcome) and len(welcome.nonce) == 16
        # Capture what the legitimate client sends: a StatusRequest in its session.
        captured: list[bytes] = []
        real_send = transport._send  # what Channel.send sends each frame with
        transport._send = lambda sock, data, *a, **kw: (captured.append(bytes(data)), real_send(sock, data, *a, **kw))[1]
        try:
            legit.send(protocol.StatusRequest())
        finally:
            transport._send = real_send
        _, status, _ = legit.recv()
        assert isinstance(status, protocol.StatusReply)
        # Replayed on the same connection: the counter is old.
        again = reply_to(legit.sock, captured)
        assert isinstance(again, protocol.Error) and again.code == protocol.ErrorCode.AUTH
        # Replayed from another connection: the session nonce is not its.
        other = connect()
        moved = reply_to(other.sock, captured)
        assert isinstance(moved, protocol.Error) and moved.code == protocol.ErrorCode.UNKNOWN_PEER
        # Forged with a wrong key (on a fresh connection: refusals are answered
        # once per connection per interval): refused, and the daemon serves the rightful.
        third = connect()
        forged = transport.Channel(third.sock, b"wrong key")
        forged.send(protocol.Hello(protocol.Role.CLIENT, "forger", "h", 2))
        assert third.sock.poll(5000)
        refused, _ = protocol.decode(third.sock.recv_multipart()[1])
        assert isinstance(refused, protocol.Error)
        with dmp.Pool(address=c.address, authkey=key) as pool:
            assert pool.map(where, range(5))[4][0] == 16
        legit.close()
        other.close()
        third.close()
    finally:
        c.stop()


def put_square(q, lock, counter, n: int) -> None:
    for i in range(n):
        q.put(i * i)
    with lock:
        counter.value += n


def test_queue_lock_value_between_a_client_and_remote_processes(cluster, monkeypatch) -> None:
    monkeypatch.setenv("DMP_ADDRESS", cluster.address)
    q = dmp.Queue()
    lock = dmp.Lock()
    counter = dmp.Value("i", 0)
    procs = [dmp.Process(target=put_square, args=(q, lock, counter, 20)) for _ in range(3)]
    for p in procs:
        p.start()
    got = sorted(q.get(timeout=20) for _ in range(60))
    for p in procs:
        p.join(20)
        assert p.exitcode == 0
    assert got == sorted([i * i for i in range(20)] * 3)
    assert counter.value == 60
    a, b = dmp.Pipe()
    a.send({"hello": 1})
    assert b.poll(5) and b.recv() == {"hello": 1}


def test_curve_encryption_end_to_end(tmp_path) -> None:
    keys = tmp_path / "keys"
    c = start_cluster(nodes=0, authkey=b"curve and key", manager_args=("--curve", str(keys)))
    try:
        # The manager wrote its keys before it listened (start_cluster waited for that).
        assert (keys / "server.key").exists() and (keys / "server.key_secret").exists()
        c.spawn("worker", c.address, "--processes", "2", "--name", "enc", "--curve", str(keys))
        script = tmp_path / "client.py"
        script.write_text(textwrap.dedent(f"""
            import dmp
            with dmp.Pool(address={c.address!r}) as p:
                print(p.map(abs, [-1, -2, 3]))
        """))
        env = dict(c.env, DMP_CURVE=str(keys), DMP_AUTHKEY="curve and key")
        out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[1, 2, 3]"
        # Without the server's public key, the CURVE handshake never completes.
        env.pop("DMP_CURVE")
        script.write_text(textwrap.dedent(f"""
            import dmp
            from dmp.client.link import RemoteLink
            from dmp.client.session import Session
            try:
                RemoteLink(Session(), {c.address!r}, b"curve and key", timeout=2.0)
            except dmp.ManagerUnavailableError:
                print("refused")
        """))
        out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "refused", out.stderr
    finally:
        c.stop()


def test_executor_on_the_cluster(cluster) -> None:
    with dmp.Executor(address=cluster.address) as ex:
        assert ex.submit(where, 7).result(30)[0] == 49
        assert [r[0] for r in ex.map(where, range(10), chunksize=3)] == [x * x for x in range(10)]
        with pytest.raises(ZeroDivisionError):
            ex.submit(lambda: 1 / 0).result(30)


def _meet(barrier) -> int:
    return barrier.wait()


def test_executor_takes_every_slot_of_the_cluster(cluster) -> None:
    # 2 nodes x 2 slots: 4 calls meet at a barrier only if all 4 run at once,
    # whatever this client machine's CPU count.
    m = dmp.Manager(address=cluster.address)
    barrier = m.Barrier(4, timeout=30)
    with dmp.Executor(address=cluster.address) as ex:
        futures = [ex.submit(_meet, barrier) for _ in range(4)]
        assert sorted(f.result(60) for f in futures) == [0, 1, 2, 3]


def test_a_module_the_nodes_lack_travels_by_value(cluster, tmp_path, monkeypatch) -> None:
    import importlib

    (tmp_path / "only_here_mod.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("only_here_mod")
    try:
        with dmp.Pool(address=cluster.address) as pool, pytest.raises(ModuleNotFoundError) as info:
            pool.map(mod.triple, [1, 2])
        assert "only_here_mod" in str(info.value) and "node" in str(info.value)
        with dmp.Pool(address=cluster.address, modules=["only_here_mod"]) as pool:
            assert pool.map(mod.triple, [1, 2, 3]) == [3, 6, 9]
    finally:
        cloudpickle.unregister_pickle_by_value(mod)
        sys.modules.pop("only_here_mod", None)
