"""Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition, Barrier
conformance, each used across processes."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from . import _funcs as f

pytestmark = pytest.mark.timeout(30)


def _start(mp: Any, target: Any, *args: Any) -> Any:
    p = mp.Process(target=target, args=args)
    p.start()
    return p


def _finish(*procs: Any) -> None:
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(5)


# --- Lock -------------------------------------------------------------------------


def test_lock_basic(mp: Any) -> None:
    lock = mp.Lock()
    assert lock.acquire()
    assert lock.acquire(False) is False
    assert lock.acquire(timeout=0.05) is False
    lock.release()
    assert lock.acquire(block=False) is True
    lock.release()
    with lock:
        assert lock.acquire(False) is False
    assert lock.acquire(False) is True
    lock.release()


def test_lock_release_unlocked_raises(mp: Any) -> None:
    lock = mp.Lock()
    with pytest.raises(ValueError):
        lock.release()


def test_lock_taken_by_a_child_that_exits_is_released_by_the_parent(mp: Any) -> None:
    # Any process may release a Lock; its holder's exit does not.
    lock = mp.Lock()
    p = _start(mp, f.acquire_lock, lock)
    _finish(p)
    assert p.exitcode == 0
    assert lock.acquire(timeout=0.1) is False
    lock.release()
    assert lock.acquire(timeout=5) is True
    lock.release()


def test_lock_held_by_a_killed_child_stays_held_and_the_parent_may_release_it(mp: Any) -> None:
    lock, holding = mp.Lock(), mp.Event()
    p = _start(mp, f.hold_lock, lock, holding)
    try:
        assert holding.wait(10)
    finally:
        p.kill()
        _finish(p)
    assert p.exitcode == -9
    assert lock.acquire(timeout=0.1) is False
    lock.release()
    assert lock.acquire(timeout=5) is True
    lock.release()


def test_lock_across_processes(mp: Any) -> None:
    lock, out = mp.Lock(), mp.Queue()
    with lock:
        p = _start(mp, f.try_acquire, lock, out)
        try:
            assert out.get(timeout=10) is False  # held by the parent
        finally:
            _finish(p)
    p = _start(mp, f.try_acquire, lock, out)
    try:
        assert out.get(timeout=10) is True
    finally:
        _finish(p)


def test_lock_protects_counter(mp: Any) -> None:
    lock = mp.Lock()
    counter = mp.Value("i", 0, lock=False)
    procs = [_start(mp, f.locked_increment, lock, counter, 300) for _ in range(3)]
    _finish(*procs)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert counter.value == 900


# --- RLock ------------------------------------------------------------------------


def test_rlock_reentrant(mp: Any) -> None:
    rlock = mp.RLock()
    assert rlock.acquire()
    assert rlock.acquire()
    with rlock:
        pass
    rlock.release()
    rlock.release()
    # Fully released: another process can take it.
    out = mp.Queue()
    p = _start(mp, f.try_acquire, rlock, out)
    try:
        assert out.get(timeout=10) is True
    finally:
        _finish(p)


def test_rlock_held_blocks_other_process(mp: Any) -> None:
    rlock, out = mp.RLock(), mp.Queue()
    rlock.acquire()
    rlock.acquire()
    rlock.release()  # still held once
    try:
        p = _start(mp, f.try_acquire, rlock, out)
        try:
            assert out.get(timeout=10) is False
        finally:
            _finish(p)
    finally:
        rlock.release()


# --- Semaphore / BoundedSemaphore -----------------------------------------------------


def test_semaphore(mp: Any) -> None:
    sem = mp.Semaphore(2)
    assert sem.get_value() == 2
    assert sem.acquire()
    assert sem.acquire(timeout=1)
    assert sem.acquire(False) is False
    assert sem.acquire(timeout=0.05) is False
    assert sem.get_value() == 0
    sem.release()
    sem.release()
    sem.release()  # an unbounded Semaphore may go above its initial value
    assert sem.get_value() == 3


def test_semaphore_across_processes(mp: Any) -> None:
    sem = mp.Semaphore(1)
    inside, release, out = mp.Event(), mp.Event(), mp.Queue()
    p = _start(mp, f.semaphore_holder, sem, inside, release, out)
    try:
        assert inside.wait(10)
        assert sem.acquire(timeout=0.1) is False  # the child holds it
        release.set()
        assert out.get(timeout=10) == "released"
        assert sem.acquire(timeout=10)
        sem.release()
    finally:
        release.set()
        _finish(p)


def test_bounded_semaphore_over_release(mp: Any) -> None:
    sem = mp.BoundedSemaphore(2)
    sem.acquire()
    sem.release()
    with pytest.raises(ValueError):
        sem.release()
    assert sem.get_value() == 2


# --- Event ---------------------------------------------------------------------------


def test_event_basic(mp: Any) -> None:
    ev = mp.Event()
    assert not ev.is_set()
    t0 = time.monotonic()
    assert ev.wait(0.1) is False
    assert time.monotonic() - t0 >= 0.05
    ev.set()
    assert ev.is_set()
    assert ev.wait(0) is True
    assert ev.wait() is True
    ev.clear()
    assert not ev.is_set()


def test_event_set_by_child(mp: Any) -> None:
    ev = mp.Event()
    p = _start(mp, f.set_event, ev)
    try:
        assert ev.wait(10) is True
        assert ev.is_set()
    finally:
        _finish(p)


def test_event_wakes_child(mp: Any) -> None:
    ev, out = mp.Event(), mp.Queue()
    procs = [_start(mp, f.wait_event, ev, out) for _ in range(2)]
    try:
        time.sleep(0.1)
        ev.set()
        assert [out.get(timeout=10), out.get(timeout=10)] == [True, True]
    finally:
        _finish(*procs)


# --- Condition ----------------------------------------------------------------------


def test_condition_basic(mp: Any) -> None:
    cond = mp.Condition()
    with cond:
        assert cond.wait(0.05) is False
        assert cond.wait_for(lambda: False, timeout=0.05) is False
        assert cond.wait_for(lambda: True, timeout=0.05) is True
        cond.notify()
        cond.notify_all()


def test_condition_wait_without_lock_raises(mp: Any) -> None:
    cond = mp.Condition()
    with pytest.raises((RuntimeError, AssertionError)):
        cond.wait(0.01)
    with pytest.raises((RuntimeError, AssertionError)):
        cond.notify()


def test_condition_across_processes(mp: Any) -> None:
    lock = mp.Lock()
    cond = mp.Condition(lock)
    flag = mp.Value("i", 0)
    out = mp.Queue()
    procs = [_start(mp, f.condition_waiter, cond, flag, out) for _ in range(2)]
    try:
        time.sleep(0.1)
        with cond:
            flag.value = 1
            cond.notify_all()
        assert [out.get(timeout=10), out.get(timeout=10)] == [True, True]
    finally:
        _finish(*procs)


# --- Barrier --------------------------------------------------------------------------


def test_barrier_across_processes(mp: Any) -> None:
    barrier, out = mp.Barrier(3), mp.Queue()
    assert barrier.parties == 3
    procs = [_start(mp, f.barrier_waiter, barrier, out) for _ in range(2)]
    try:
        mine = barrier.wait(10)
        theirs = [out.get(timeout=10), out.get(timeout=10)]
    finally:
        _finish(*procs)
    assert sorted([mine, *theirs]) == [0, 1, 2]
    assert not barrier.broken


def test_barrier_timeout_breaks(mp: Any) -> None:
    barrier = mp.Barrier(2)
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(0.1)
    assert barrier.broken
    barrier.reset()
    assert not barrier.broken


def test_barrier_abort(mp: Any) -> None:
    barrier = mp.Barrier(2)
    barrier.abort()
    assert barrier.broken
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait(1)


@pytest.mark.local_only("a managed Barrier cannot run an action: user code never runs in the manager (docs/managers.md)")
def test_barrier_action(mp: Any) -> None:
    barrier = mp.Barrier(1, action=f.noop)
    assert barrier.wait(5) == 0
    assert barrier.n_waiting == 0
