"""Local mode: a thread waiting on a result runs the embedded reactor itself.

Covers ``dmp.client.turns.Turns`` around the embedded daemon's steps:
the waiting caller leads, other waiters follow, the engine thread takes over
when the leader leaves, and callbacks on the caller's turn behave.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import TimeoutError

import pytest
from dmp_server import daemon as daemon_mod

import dmp
from tests import turns as turns_mod

pytestmark = pytest.mark.timeout(60)


def square(x: int) -> int:
    return x * x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.fixture
def turns(monkeypatch) -> collections.Counter[str]:
    """Reactor steps (``Daemon.handle`` calls) counted by the name of the thread that ran them."""
    counter: collections.Counter[str] = collections.Counter()
    handle = daemon_mod.Daemon.handle

    def counting(self, ready):  # type: ignore[no-untyped-def]
        counter[threading.current_thread().name] += 1
        return handle(self, ready)

    monkeypatch.setattr(daemon_mod.Daemon, "handle", counting)
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
    with dmp.Pool(2) as pool:
        turns_mod.many_threads_wait_at_once(pool, square, timeout=10)


def test_a_follower_is_served_after_the_leader_leaves() -> None:
    with dmp.Pool(2) as pool:
        turns_mod.follower_served_after_leader_leaves(pool, square, nap, timeout=20)


def test_callbacks_run_with_nobody_waiting() -> None:
    with dmp.Pool(2) as pool:
        turns_mod.callbacks_run_with_nobody_waiting(pool, square, timeout=20)


def test_a_callback_may_submit_more_work() -> None:
    with dmp.Pool(2) as pool:
        chained: list[dmp.client.pool.AsyncResult] = []
        first = pool.apply_async(square, (3,), callback=lambda v: chained.append(pool.apply_async(square, (v,))))
        assert first.get(timeout=10) == 9
        assert chained[0].get(timeout=10) == 81


def test_terminate_from_a_callback_does_not_hang() -> None:
    pool = dmp.Pool(2)
    try:
        result = pool.apply_async(square, (2,), callback=lambda _: pool.terminate())
        assert result.get(timeout=30) == 4
        pool.join()  # a hang here is caught by the test's timeout
    finally:
        pool.terminate()


def test_get_with_a_timeout_returns_in_time() -> None:
    with dmp.Pool(2) as pool:
        turns_mod.get_with_a_timeout_returns_in_time(pool, nap, timeout=10)


@pytest.mark.timeout(180)  # 15 maps and 15 checks: 52 s seen on a loaded 2-core machine
def test_ctrl_c_while_the_caller_runs_the_reactor_leaves_the_pool_working() -> None:
    # The main thread is mostly *handling* messages here (tiny tasks, chunksize 1):
    # an interrupt must wait for the step to end, or the scheduler is left half updated.
    with dmp.Pool(2) as pool:
        assert turns_mod.interrupt_maps_then_use(pool, square, rounds=15, seed=7, delay=(0.005, 0.05), check=2000) > 0


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


def test_a_new_pools_first_apply_is_handled_and_waited_on_by_its_caller(turns) -> None:
    # The engine thread starts before the forks and steps back while they are
    # made on the turn, and afterwards: the first apply is posted, handled and
    # waited on by the calling thread, no step on the engine thread.
    for _ in range(3):
        with dmp.Pool(2) as pool:
            turns.clear()
            assert pool.apply(square, (7,)) == 49
            assert turns["dmp-engine"] == 0, turns
            assert turns[threading.main_thread().name] > 0, turns


def test_callbacks_of_a_new_pool_run_with_nobody_waiting() -> None:
    # ... and the engine thread serves them once it stops stepping back.
    with dmp.Pool(2) as pool:
        got: list[int] = []
        done = threading.Event()
        pool.apply_async(square, (5,), callback=lambda r: (got.append(r), done.set()))
        assert done.wait(30)
        assert got == [25]
