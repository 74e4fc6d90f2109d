"""Public names, exception types, Manager basics and cloudpickle promises."""

from __future__ import annotations

import multiprocessing
import queue
from typing import Any

import pytest

from . import _funcs as f

pytestmark = pytest.mark.timeout(30)

PUBLIC_NAMES = [
    "Process",
    "Pool",
    "Queue",
    "JoinableQueue",
    "SimpleQueue",
    "Pipe",
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Event",
    "Condition",
    "Barrier",
    "Value",
    "Array",
    "Manager",
    "cpu_count",
    "current_process",
    "active_children",
    "parent_process",
    "TimeoutError",
    "ProcessError",
    "AuthenticationError",
    "BufferTooShort",
]


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_public_name_exists(mp: Any, name: str) -> None:
    assert callable(getattr(mp, name))


@pytest.mark.parametrize(
    "name", ["TimeoutError", "ProcessError", "AuthenticationError", "BufferTooShort"]
)
def test_error_is_the_multiprocessing_class(mp: Any, name: str) -> None:
    # Code that catches multiprocessing.X must catch mp.X.
    ours = getattr(mp, name)
    assert issubclass(ours, getattr(multiprocessing, name))
    assert issubclass(ours, Exception)


@pytest.mark.parametrize("name", ["TimeoutError", "AuthenticationError", "BufferTooShort"])
def test_errors_derive_from_process_error(mp: Any, name: str) -> None:
    assert issubclass(getattr(mp, name), mp.ProcessError)


@pytest.mark.dmp_only
def test_worker_lost_error(mp: Any) -> None:
    assert issubclass(mp.WorkerLostError, mp.ProcessError)
    assert issubclass(mp.WorkerLostError, multiprocessing.ProcessError)
    assert not issubclass(mp.WorkerLostError, mp.TimeoutError)


@pytest.mark.dmp_only
def test_manager_unavailable_error(mp: Any) -> None:
    assert issubclass(mp.ManagerUnavailableError, mp.ProcessError)


@pytest.mark.dmp_only
@pytest.mark.parametrize(
    "name", ["Executor", "connect", "WorkerLostError", "ManagerUnavailableError"]
)
def test_dmp_extra_public_names(mp: Any, name: str) -> None:
    assert name in mp.__all__
    assert getattr(mp, name) is not None


@pytest.mark.dmp_only
def test_all_is_explicit(mp: Any) -> None:
    # Every name in __all__ resolves, and the multiprocessing names are there.
    for name in mp.__all__:
        assert hasattr(mp, name), name
    assert set(PUBLIC_NAMES) <= set(mp.__all__)


# --- Manager (the SyncManager every mode offers) ----------------------------------------


def test_manager_dict_list_namespace(mp: Any) -> None:
    with mp.Manager() as m:
        d = m.dict()
        lst = m.list([1, 2])
        ns = m.Namespace()
        ns.x = 10
        p = mp.Process(target=f.fill_shared, args=(d, lst, ns))
        p.start()
        p.join(10)
        assert p.exitcode == 0
        assert dict(d) == {"child": True}
        assert list(lst) == [1, 2, 3]
        assert ns.x == 11


def test_manager_queue_and_lock(mp: Any) -> None:
    with mp.Manager() as m:
        q = m.Queue()
        q.put("a")
        assert q.get(timeout=5) == "a"
        with pytest.raises(queue.Empty):
            q.get(timeout=0.05)
        lock = m.Lock()
        assert lock.acquire(timeout=1)
        lock.release()
        v = m.Value("i", 3)
        v.value += 1
        assert v.value == 4


def test_manager_queue_passed_to_pool_tasks(mp: Any) -> None:
    # A manager queue is picklable: it can be handed to pool tasks.
    with mp.Manager() as m, mp.Pool(2) as p:
        q = m.Queue()
        p.starmap(f.put_items, [(q, [i]) for i in range(4)])
        assert sorted(q.get(timeout=5) for _ in range(4)) == [0, 1, 2, 3]


# --- cloudpickle promises ------------------------------------------------------------------


@pytest.mark.dmp_only
def test_closure_over_local_state(mp: Any) -> None:
    # stdlib pickles pool functions by reference: a closure cannot be sent.
    table = {i: str(i) * 2 for i in range(5)}

    def lookup(k: int) -> str:
        return table[k]

    with mp.Pool(2) as p:
        assert p.map(lookup, range(5)) == [table[i] for i in range(5)]
        assert p.apply_async(lambda: "lambda via apply_async").get(10) == "lambda via apply_async"
        assert p.starmap(lambda a, b: a * b, [(2, 3), (4, 5)]) == [6, 20]
