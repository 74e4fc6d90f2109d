"""Local mode: a thread waiting on a result runs the embedded reactor itself.

Covers the turn-taking in ``dmp_server.manager.Manager.wait``/``post``:
the waiting caller leads, other waiters follow, run()'s thread takes over
when the leader leaves, and callbacks on the caller's turn behave.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import TimeoutError

import pytest
from dmp_server import manager as manager_mod

import dmp
from tests.interrupts import interrupt_maps_then_use

pytestmark = pytest.mark.timeout(60)


def square(x: int) -> int:
    return x * x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.fixture
def turns(monkeypatch) -> collections.Counter[str]:
    """Reactor turns (``Manager._step`` calls) counted by the name of the thread that ran them."""
    counter: collections.Counter[str] = collections.Counter()
    step = manager_mod.Manager._step

    def counting(self, limit):  # type: ignore[no-untyped-def]
        counter[threading.current_thread().name] += 1
        return step(self, limit)

    monkeypatch.setattr(manager_mod.Manager, "_step", counting)
    return counter


def test_the_waiting_caller_runs_the_reactor(turns) -> None:
    with dmp.Pool(2) as pool:
        for i in range(50):
            pool.apply_async(square, (i,)).get(timeout=10)
        turns.clear()
        for i in range(300):
            assert pool.apply_async(square, (i,)).get(timeout=10) == i * i
    assert turns[threading.main_thread().name] > 150, turns


def test_many_waiting_threads_all_get_their_results() -> None:
    errors: list[BaseException] = []
    with dmp.Pool(2) as pool:

        def caller(k: int) -> None:
            try:
                for i in range(100):
                    assert pool.apply_async(square, (k + i,)).get(timeout=10) == (k + i) ** 2
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_a_follower_is_served_after_the_leader_leaves() -> None:
    with dmp.Pool(2) as pool:
        slow = pool.apply_async(nap, (1.0,))
        got: list[float] = []
        follower = threading.Thread(target=lambda: got.append(slow.get(timeout=20)))
        follower.start()
        for i in range(50):
            assert pool.apply_async(square, (i,)).get(timeout=10) == i * i
        follower.join(20)
        assert got == [1.0]


def test_callbacks_run_with_nobody_waiting() -> None:
    with dmp.Pool(2) as pool:
        done = threading.Event()
        got: list[int] = []

        def collect(value: int) -> None:
            got.append(value)
            if len(got) == 100:
                done.set()

        for i in range(100):
            pool.apply_async(square, (i,), callback=collect)
        assert done.wait(20), f"only {len(got)} callbacks ran"


def test_a_callback_may_submit_more_work() -> None:
    with dmp.Pool(2) as pool:
        chained: list[dmp.pool.AsyncResult] = []
        first = pool.apply_async(square, (3,), callback=lambda v: chained.append(pool.apply_async(square, (v,))))
        assert first.get(timeout=10) == 9
        assert chained[0].get(timeout=10) == 81


def test_terminate_from_a_callback_does_not_hang() -> None:
    pool = dmp.Pool(2)
    try:
        result = pool.apply_async(square, (2,), callback=lambda _: pool.terminate())
        start = time.monotonic()
        assert result.get(timeout=10) == 4
        pool.join()
        assert time.monotonic() - start < 8
    finally:
        pool.terminate()


def test_get_with_a_timeout_returns_in_time() -> None:
    with dmp.Pool(2) as pool:
        result = pool.apply_async(nap, (1.5,))
        start = time.monotonic()
        with pytest.raises(dmp.TimeoutError):
            result.get(timeout=0.2)
        assert time.monotonic() - start < 1.4
        assert result.get(timeout=10) == 1.5


def test_ctrl_c_while_the_caller_runs_the_reactor_leaves_the_pool_working() -> None:
    # The main thread is mostly *handling* messages here (tiny tasks, chunksize 1):
    # an interrupt must wait for the step to end, or the scheduler is left half updated.
    with dmp.Pool(2) as pool:
        assert interrupt_maps_then_use(pool, square, rounds=15, seed=7, delay=(0.005, 0.05), check=2000) > 0


def test_an_executor_future_waiter_runs_the_reactor_too(turns) -> None:
    with dmp.Executor(2) as ex:
        for i in range(20):
            ex.submit(square, i).result(timeout=10)
        turns.clear()
        for i in range(200):
            assert ex.submit(square, i).result(timeout=10) == i * i
        assert ex.submit(nap, 0.3).exception(timeout=10) is None
        with pytest.raises(TimeoutError):
            ex.submit(nap, 1.0).result(timeout=0.1)
    assert turns[threading.main_thread().name] > 100, turns
