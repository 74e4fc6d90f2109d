"""Managers as real programs use them: a managed Pool, connect() with a wrong
key, RemoteError, str() of proxies, a Barrier with an action, and a Lock a
child takes and its parent releases."""

from __future__ import annotations

import functools
import importlib
import multiprocessing
import os
import types
from typing import Any

import pytest

from . import _funcs as f

pytestmark = pytest.mark.timeout(60)


def _managers(mp: Any) -> Any:
    """multiprocessing.managers, or dmp.managers."""
    base = mp.__name__ if isinstance(mp, types.ModuleType) else "multiprocessing"
    return importlib.import_module(f"{base}.managers")


def _touch(path: str) -> None:
    with open(path, "a") as fh:
        fh.write(f"{os.getpid()}\n")


def _acquire(lock: Any) -> None:
    lock.acquire()


def test_managed_pool(mp: Any) -> None:
    with mp.Manager() as m:
        pool = m.Pool(2)
        try:
            assert pool.map(f.square, range(5)) == [0, 1, 4, 9, 16]
            assert pool.apply(f.add, (2, 3)) == 5
        finally:
            pool.terminate()


def test_connect_with_a_wrong_key_raises(mp: Any) -> None:
    managers = _managers(mp)
    with managers.SyncManager(authkey=b"the right key") as m:
        other = managers.SyncManager(address=m.address, authkey=b"a wrong key")
        with pytest.raises(multiprocessing.AuthenticationError):
            other.connect()
        # The manager and this process's right key still work.
        d = m.dict()
        d["k"] = 1
        right = managers.SyncManager(address=m.address, authkey=b"the right key")
        right.connect()
        assert right.list([1, 2])[1] == 2


def test_unexposed_method_raises_remote_error(mp: Any) -> None:
    managers = _managers(mp)
    assert issubclass(managers.RemoteError, Exception)
    with mp.Manager() as m:
        d = m.dict()
        with pytest.raises(managers.RemoteError):
            d._callmethod("no_such_method")


@pytest.mark.parametrize("typeid", ["Lock", "RLock", "Event", "Queue", "Condition", "Namespace", "dict", "list"])
def test_str_of_a_proxy_describes_the_object(mp: Any, typeid: str) -> None:
    with mp.Manager() as m:
        proxy = getattr(m, typeid)()
        assert "failed" not in str(proxy)
        assert "failed" not in repr(proxy)


def test_barrier_action_runs_once(mp: Any, tmp_path: Any) -> None:
    path = os.fspath(tmp_path / "acted")
    with mp.Manager() as m:
        barrier = m.Barrier(2, action=functools.partial(_touch, path))
        child = mp.Process(target=barrier.wait, args=(30,))
        child.start()
        assert barrier.wait(30) in (0, 1)
        child.join(30)
        assert child.exitcode == 0
        assert barrier.parties == 2
        assert not barrier.broken
    with open(path) as fh:
        ran = fh.read().split()
    assert len(ran) == 1
    assert int(ran[0]) != os.getpid()  # it ran in the manager's side, not here


def test_lock_taken_by_an_exited_child_stays_taken(mp: Any) -> None:
    with mp.Manager() as m:
        lock = m.Lock()
        child = mp.Process(target=_acquire, args=(lock,))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        # The child exited normally: the lock is still held, and anyone may release it.
        assert not lock.acquire(timeout=0.2)
        lock.release()
        assert lock.acquire(timeout=5)
        lock.release()


def test_xmlrpclib_serializer_turns_tuples_into_lists(mp: Any) -> None:
    managers = _managers(mp)
    with managers.SyncManager(serializer="xmlrpclib") as m:
        q = m.Queue()
        q.put((1, ("a", b"b"), {"k": (2,)}))
        got = q.get(timeout=10)
        assert got == [1, ["a", b"b"], {"k": [2]}]
        assert type(got) is list and type(got[1]) is list and type(got[2]["k"]) is list
        with pytest.raises(TypeError, match="cannot marshal"):
            q.put(print)
        shared = m.list([(1, 2)])
        assert shared[0] == [1, 2] and type(shared[0]) is list
        d = m.dict()
        d["x"] = (1, 2)
        assert type(d["x"]) is list and d.get("x") == [1, 2]
        ns = m.Namespace()
        ns.a = (3, 4)
        assert ns.a == [3, 4]
