"""Pool conformance: every method, AsyncResult, errors, lifecycle, faults."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from . import _funcs as f

pytestmark = pytest.mark.timeout(30)


# --- apply / apply_async -------------------------------------------------------


def test_apply(mp: Any) -> None:
    with mp.Pool(2) as p:
        assert p.apply(f.add, (2, 3)) == 5
        assert p.apply(f.add_kw, (1,), {"b": 2, "c": 3}) == 321


def test_apply_runs_in_another_process(mp: Any) -> None:
    with mp.Pool(2) as p:
        assert p.apply(f.getpid) != os.getpid()


def test_apply_async_get_and_callback(mp: Any) -> None:
    got: list[Any] = []
    errors: list[BaseException] = []
    with mp.Pool(2) as p:
        r = p.apply_async(f.add, (4, 5), callback=got.append, error_callback=errors.append)
        assert r.get(timeout=10) == 9
        assert r.ready()
        assert r.successful()
    # The callback runs before get() returns.
    assert got == [9]
    assert errors == []


def test_apply_async_error_callback(mp: Any) -> None:
    got: list[Any] = []
    errors: list[BaseException] = []
    with mp.Pool(2) as p:
        r = p.apply_async(
            f.raise_value_error, ("bad apple",), callback=got.append, error_callback=errors.append
        )
        with pytest.raises(ValueError, match="bad apple"):
            r.get(timeout=10)
        assert r.ready()
        assert not r.successful()
    assert got == []
    assert len(errors) == 1
    assert isinstance(errors[0], ValueError)
    assert "bad apple" in str(errors[0])


def test_apply_async_kwds(mp: Any) -> None:
    with mp.Pool(2) as p:
        assert p.apply_async(f.add_kw, (1,), {"c": 2}).get(10) == 201


def test_many_apply_async(mp: Any) -> None:
    with mp.Pool(2) as p:
        results = [p.apply_async(f.square, (i,)) for i in range(50)]
        assert [r.get(10) for r in results] == [i * i for i in range(50)]


# --- AsyncResult -----------------------------------------------------------------


def test_async_result_get_timeout(mp: Any) -> None:
    with mp.Pool(2) as p:
        r = p.apply_async(f.sleep_then_return, (3.0, "late"))
        with pytest.raises(mp.TimeoutError):  # raised only while the result is not there
            r.get(timeout=0.05)
        assert r.get(timeout=30) == "late"


def test_async_result_timeout_is_multiprocessing_timeout(mp: Any) -> None:
    # Code written for multiprocessing catches multiprocessing.TimeoutError.
    with mp.Pool(2) as p:
        r = p.apply_async(f.sleep_then_return, (1.0,))
        with pytest.raises(multiprocessing.TimeoutError):
            r.get(timeout=0.05)
        r.wait(10)


def test_async_result_wait_ready_successful(mp: Any) -> None:
    with mp.Pool(2) as p:
        r = p.apply_async(f.sleep_then_return, (3.0, 1))
        assert r.wait(timeout=0.01) is None
        assert not r.ready()
        with pytest.raises(ValueError):
            r.successful()
        r.wait(timeout=30)
        assert r.ready()
        assert r.successful()
        assert r.get(0) == 1


def test_async_result_wait_without_timeout(mp: Any) -> None:
    with mp.Pool(2) as p:
        r = p.apply_async(f.sleep_then_return, (0.1, "x"))
        r.wait()
        assert r.ready()
        assert r.get() == "x"


# --- map / map_async ---------------------------------------------------------------


def test_map(mp: Any) -> None:
    with mp.Pool(2) as p:
        assert p.map(f.square, range(20)) == [i * i for i in range(20)]


def test_map_returns_list(mp: Any) -> None:
    with mp.Pool(2) as p:
        assert type(p.map(f.square, range(3))) is list


@pytest.mark.parametrize("chunksize", [1, 7, 1000])
def test_map_chunksize(mp: Any, chunksize: int) -> None:
    with mp.Pool(2) as p:
        assert p.map(f.square, range(100), chunksize=chunksize) == [i * i for i in range(100)]


def test_map_large(mp: Any) -> None:
    n = 100_000
    with mp.Pool(2) as p:
        out = p.map(f.square, range(n))
    assert len(out) == n
    assert out == [i * i for i in range(n)]


def test_map_generator_input(mp: Any) -> None:
    with mp.Pool(2) as p:
        assert p.map(f.square, (i for i in range(30))) == [i * i for i in range(30)]


def test_map_empty(mp: Any) -> None:
    with mp.Pool(2) as p:
        assert p.map(f.square, []) == []
        assert p.map(f.square, iter(())) == []


def test_map_exception(mp: Any) -> None:
    with mp.Pool(2) as p:
        with pytest.raises(ValueError, match="three is bad"):
            p.map(f.fail_on_three, range(10))
        # The pool is still usable afterwards.
        assert p.map(f.square, range(3)) == [0, 1, 4]


def test_map_async_callback(mp: Any) -> None:
    got: list[Any] = []
    errors: list[BaseException] = []
    with mp.Pool(2) as p:
        r = p.map_async(f.square, range(10), callback=got.append, error_callback=errors.append)
        assert r.get(timeout=10) == [i * i for i in range(10)]
        assert r.successful()
    assert got == [[i * i for i in range(10)]]
    assert errors == []


def test_map_async_error_callback(mp: Any) -> None:
    got: list[Any] = []
    errors: list[BaseException] = []
    with mp.Pool(2) as p:
        r = p.map_async(
            f.fail_on_three, range(10), callback=got.append, error_callback=errors.append
        )
        with pytest.raises(ValueError, match="three is bad"):
            r.get(timeout=10)
        assert not r.successful()
    assert got == []
    assert len(errors) == 1 and isinstance(errors[0], ValueError)


def test_map_async_empty(mp: Any) -> None:
    got: list[Any] = []
    with mp.Pool(2) as p:
        r = p.map_async(f.square, [], callback=got.append)
        assert r.get(timeout=10) == []
        assert r.successful()
    # stdlib never calls the callback for an empty iterable (its MapResult is
    # born ready); calling it once with [] is accepted as well.
    assert got in ([], [[]])


def test_map_matches_builtin_map(mp: Any) -> None:
    with mp.Pool(2) as p:

        @settings(max_examples=25, deadline=None, database=None)
        @given(
            xs=st.lists(st.integers(-(10**6), 10**6), max_size=60),
            chunksize=st.one_of(st.none(), st.integers(1, 20)),
        )
        def check(xs: list[int], chunksize: int | None) -> None:
            assert p.map(f.square, xs, chunksize) == list(map(f.square, xs))

        check()


# --- imap / imap_unordered ------------------------------------------------------------


def test_imap(mp: Any) -> None:
    with mp.Pool(2) as p:
        it = p.imap(f.square, range(20))
        assert next(it) == 0
        assert list(it) == [i * i for i in range(1, 20)]


def test_imap_next_timeout(mp: Any) -> None:
    with mp.Pool(2) as p:
        it = p.imap(f.sleep_then_return, [1.0])
        with pytest.raises(mp.TimeoutError):
            it.next(timeout=0.05)
    # terminated by __exit__ with the task still running: must not hang


def test_imap_next_timeout_then_value(mp: Any) -> None:
    with mp.Pool(2) as p:
        it = p.imap(f.sleep_square, [3])
        assert it.next(timeout=10) == 9
        with pytest.raises(StopIteration):
            it.next(timeout=10)


def test_imap_exception_then_continues(mp: Any) -> None:
    # stdlib raises at the failing position and carries on with later items.
    with mp.Pool(2) as p:
        it = p.imap(f.fail_on_three, range(6))
        got = [next(it) for _ in range(3)]
        with pytest.raises(ValueError, match="three is bad"):
            next(it)
        got += list(it)
    assert got == [0, 1, 4, 16, 25]


@pytest.mark.parametrize("chunksize", [1, 7, 1000])
def test_imap_chunksize(mp: Any, chunksize: int) -> None:
    with mp.Pool(2) as p:
        assert list(p.imap(f.square, range(100), chunksize)) == [i * i for i in range(100)]


def test_imap_large(mp: Any) -> None:
    n = 100_000
    with mp.Pool(2) as p:
        out = list(p.imap(f.square, range(n), chunksize=100))
    assert out == [i * i for i in range(n)]


def test_imap_default_chunksize_many(mp: Any) -> None:
    # One task per item: the per-task overhead must stay small.
    n = 5_000
    with mp.Pool(2) as p:
        assert sum(p.imap(f.square, range(n))) == sum(i * i for i in range(n))


def test_imap_generator_input(mp: Any) -> None:
    with mp.Pool(2) as p:
        assert list(p.imap(f.square, (i for i in range(30)))) == [i * i for i in range(30)]


@pytest.mark.parametrize("chunksize", [1, 2])
@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_generator_that_waits_on_its_own_results(mp: Any, method: str, chunksize: int) -> None:
    """A feedback loop: the generator gives the next chunk only once the consumer has seen
    the last one's results, so what it gave must be sent before it is asked for more."""
    import queue

    seen: queue.Queue[None] = queue.Queue()

    def gen() -> Any:
        for i in range(0, 8, chunksize):
            yield from range(i, i + chunksize)
            seen.get(timeout=10)  # queue.Empty fails the item: items were held unsent

    out = []
    with mp.Pool(2) as p:
        for r in getattr(p, method)(f.square, gen(), chunksize):
            out.append(r)
            if len(out) % chunksize == 0:
                seen.put(None)
    assert sorted(out) == [i * i for i in range(8)]


def test_imap_empty(mp: Any) -> None:
    with mp.Pool(2) as p:
        assert list(p.imap(f.square, [])) == []
        assert list(p.imap_unordered(f.square, [])) == []


def test_imap_stop_early_on_long_generator(mp: Any) -> None:
    # The caller may stop consuming early; leaving the pool must not hang.
    def gen() -> Any:
        yield from range(10_000)

    with mp.Pool(2) as p:
        it = p.imap(f.square, gen(), chunksize=50)
        assert [next(it) for _ in range(10)] == [i * i for i in range(10)]


def test_imap_unordered(mp: Any) -> None:
    with mp.Pool(2) as p:
        out = list(p.imap_unordered(f.sleep_square, range(20)))
    assert sorted(out) == sorted(i * i for i in range(20))


@pytest.mark.parametrize("chunksize", [1, 7, 1000])
def test_imap_unordered_chunksize(mp: Any, chunksize: int) -> None:
    with mp.Pool(2) as p:
        out = list(p.imap_unordered(f.square, range(100), chunksize))
    assert sorted(out) == [i * i for i in range(100)]


def test_imap_unordered_generator_input(mp: Any) -> None:
    with mp.Pool(2) as p:
        out = list(p.imap_unordered(f.square, (i for i in range(30))))
    assert sorted(out) == [i * i for i in range(30)]


def test_imap_unordered_next_timeout(mp: Any) -> None:
    with mp.Pool(2) as p:
        it = p.imap_unordered(f.sleep_then_return, [1.0])
        with pytest.raises(mp.TimeoutError):
            it.next(timeout=0.05)


# --- starmap ------------------------------------------------------------------------


def test_starmap(mp: Any) -> None:
    with mp.Pool(2) as p:
        assert p.starmap(f.add, [(i, i) for i in range(10)]) == [2 * i for i in range(10)]


def test_starmap_chunksize_and_generator(mp: Any) -> None:
    with mp.Pool(2) as p:
        out = p.starmap(f.add, ((i, 1) for i in range(50)), chunksize=7)
    assert out == [i + 1 for i in range(50)]


def test_starmap_empty(mp: Any) -> None:
    with mp.Pool(2) as p:
        assert p.starmap(f.add, []) == []


def test_starmap_async(mp: Any) -> None:
    got: list[Any] = []
    errors: list[BaseException] = []
    with mp.Pool(2) as p:
        r = p.starmap_async(
            f.add, [(1, 2), (3, 4)], callback=got.append, error_callback=errors.append
        )
        assert r.get(10) == [3, 7]
    assert got == [[3, 7]]
    assert errors == []


def test_starmap_async_error(mp: Any) -> None:
    errors: list[BaseException] = []
    with mp.Pool(2) as p:
        r = p.starmap_async(f.raise_task_error, [(1,), (2,)], error_callback=errors.append)
        with pytest.raises(f.TaskError):
            r.get(10)
    assert len(errors) == 1 and isinstance(errors[0], f.TaskError)


# --- exceptions -----------------------------------------------------------------------


def test_exception_keeps_type_message_and_remote_traceback(mp: Any) -> None:
    with mp.Pool(2) as p:
        with pytest.raises(f.TaskError) as info:
            p.apply(f.raise_task_error, (42,))
    exc = info.value
    assert type(exc) is f.TaskError
    assert str(exc) == "task failed on 42"
    assert exc.__cause__ is not None
    assert "raise_task_error" in str(exc.__cause__)


def test_map_exception_remote_traceback(mp: Any) -> None:
    with mp.Pool(2) as p:
        with pytest.raises(ValueError) as info:
            p.map(f.fail_on_three, range(5))
    assert info.value.__cause__ is not None
    assert "fail_on_three" in str(info.value.__cause__)


def test_unpicklable_result(mp: Any) -> None:
    with mp.Pool(2) as p:
        with pytest.raises(MaybeEncodingError) as info:
            p.map(f.return_lock, range(2))
        assert "lock" in str(info.value).lower()
        with pytest.raises(MaybeEncodingError):
            p.apply(f.return_lock)
        # The pool survives.
        assert p.apply(f.square, (5,)) == 25


def test_unpicklable_argument(mp: Any) -> None:
    with mp.Pool(2) as p:
        with pytest.raises(Exception) as info:
            p.apply(f.identity, (threading.Lock(),))
        assert "pickle" in str(info.value).lower()
        with pytest.raises(Exception) as info:
            p.map(f.identity, [1, threading.Lock(), 3])
        assert "pickle" in str(info.value).lower()
        assert p.map(f.square, [2, 3]) == [4, 9]


def test_unpicklable_exception(mp: Any) -> None:
    with mp.Pool(2) as p:
        with pytest.raises(MaybeEncodingError):
            p.apply(f.raise_with_lock)
        assert p.apply(f.square, (3,)) == 9


@pytest.mark.dmp_only
def test_exception_that_cannot_be_rebuilt(mp: Any) -> None:
    # stdlib's result-handler thread dies unpickling it and the call hangs
    # forever; dmp reports a clear error and keeps the pool working.
    with mp.Pool(2) as p:
        with pytest.raises(Exception) as info:
            p.apply(f.raise_bad_init)
        assert "cannot be rebuilt" in str(info.value) or "BadInit" in repr(info.value)
        assert p.apply(f.square, (3,)) == 9


def test_large_result(mp: Any) -> None:
    n = 20 * 1024 * 1024
    with mp.Pool(2) as p:
        assert p.apply(f.big_bytes, (n,)) == b"x" * n
        assert [len(b) for b in p.map(f.big_bytes, [10, n // 4, 0])] == [10, n // 4, 0]


def test_get_twice_returns_the_same(mp: Any) -> None:
    with mp.Pool(2) as p:
        r = p.apply_async(f.identity, ([1, 2],))
        assert r.get(10) == [1, 2]
        assert r.get(10) == [1, 2]
        e = p.apply_async(f.raise_value_error, ("again",))
        for _ in range(2):
            with pytest.raises(ValueError, match="again"):
                e.get(10)


def test_default_processes(mp: Any) -> None:
    with mp.Pool() as p:
        assert p.map(f.square, range(10)) == [i * i for i in range(10)]


# --- lifecycle ------------------------------------------------------------------------


def test_close_join(mp: Any) -> None:
    p = mp.Pool(2)
    try:
        r = p.map_async(f.square, range(10))
        p.close()
        p.join()
        # close() lets queued work finish.
        assert r.ready()
        assert r.get(0) == [i * i for i in range(10)]
    finally:
        p.terminate()


def test_join_before_close_raises(mp: Any) -> None:
    with mp.Pool(2) as p:
        with pytest.raises(ValueError):
            p.join()


def test_closed_pool_raises(mp: Any) -> None:
    p = mp.Pool(2)
    try:
        p.close()
        with pytest.raises(ValueError):
            p.apply(f.square, (1,))
        with pytest.raises(ValueError):
            p.apply_async(f.square, (1,))
        with pytest.raises(ValueError):
            p.map(f.square, [1])
        with pytest.raises(ValueError):
            p.imap(f.square, [1])
        p.join()
    finally:
        p.terminate()


def test_terminated_pool_raises(mp: Any) -> None:
    p = mp.Pool(2)
    p.terminate()
    try:
        with pytest.raises(ValueError):
            p.map(f.square, [1])
    finally:
        p.join()


# Tasks of TASK_S seconds: terminating "promptly" means well before they could end,
# with room for a loaded machine (the bound is a third of the tasks' length).
TASK_S = 90


@pytest.mark.timeout(120)
def test_terminate_with_running_tasks_is_prompt(mp: Any) -> None:
    p = mp.Pool(2)
    try:
        results = [p.apply_async(f.sleep_then_return, (TASK_S,)) for _ in range(4)]
        time.sleep(0.2)  # not synchronisation: terminate is prompt whether or not they started
        t0 = time.monotonic()
        p.terminate()
        p.join()
        assert time.monotonic() - t0 < TASK_S / 3
        assert not any(r.ready() and r.successful() for r in results)
    finally:
        p.terminate()


@pytest.mark.timeout(120)
def test_context_manager_exit_terminates(mp: Any) -> None:
    t0 = time.monotonic()
    with mp.Pool(2) as p:
        p.apply_async(f.sleep_then_return, (TASK_S,))
        time.sleep(0.2)  # not synchronisation: exit terminates whether or not it started
    assert time.monotonic() - t0 < TASK_S / 3
    with pytest.raises(ValueError):
        p.apply(f.square, (1,))
    p.join()


def _long_gen(n: int) -> Any:
    yield from range(n)


@pytest.mark.parametrize("how", ["imap", "imap_unordered", "map_async"])
def test_terminate_while_feeding_raises_nothing_in_background(mp: Any, how: str) -> None:
    # Leaving the pool while its input is still being fed must stop the
    # feeding quietly: no exception may escape in a background thread.
    errors: list[str] = []
    old_hook = threading.excepthook

    def hook(args: Any) -> None:
        errors.append(
            f"{args.thread.name if args.thread else '?'}: {args.exc_type.__name__}: {args.exc_value}"
        )

    threading.excepthook = hook
    before = set(threading.enumerate())
    try:
        with mp.Pool(2) as p:
            if how == "map_async":
                p.map_async(f.square, _long_gen(200_000), chunksize=1)
                time.sleep(0.2)
            else:
                it = getattr(p, how)(f.square, _long_gen(200_000), chunksize=1)
                next(it)
        p.join()
        # Give the threads the pool started a moment to finish, so an error
        # they raise lands here and not in a later test.
        deadline = time.monotonic() + 3
        for t in set(threading.enumerate()) - before:
            t.join(max(0.0, deadline - time.monotonic()))
    finally:
        threading.excepthook = old_hook
    assert errors == []


def test_context_manager_returns_pool(mp: Any) -> None:
    p = mp.Pool(2)
    with p as q:
        assert q is p
        assert q.apply(f.square, (3,)) == 9


def test_processes_bound_concurrency(mp: Any) -> None:
    # Two processes: at most two distinct worker pids serve the tasks.
    with mp.Pool(2) as p:
        pids = set(p.map(f.getpid_slow, range(20), chunksize=1))
    assert 1 <= len(pids) <= 2
    assert os.getpid() not in pids


def test_processes_must_be_positive(mp: Any) -> None:
    with pytest.raises(ValueError):
        mp.Pool(0)


@pytest.mark.local_only("pools of one client share the cluster's worker processes")
def test_two_pools_at_once(mp: Any) -> None:
    with mp.Pool(2) as p1, mp.Pool(2) as p2:
        r1 = p1.map_async(f.square, range(50))
        r2 = p2.starmap_async(f.add, [(i, 1) for i in range(50)])
        assert r1.get(10) == [i * i for i in range(50)]
        assert r2.get(10) == [i + 1 for i in range(50)]
        assert set(p1.map(f.getpid, range(4))).isdisjoint(p2.map(f.getpid, range(4)))


def test_pool_used_after_other_pool_closed(mp: Any) -> None:
    with mp.Pool(2) as p:
        assert p.apply(f.square, (2,)) == 4
    with mp.Pool(2) as p:
        assert p.apply(f.square, (3,)) == 9


def test_pool_inside_child_process(mp: Any) -> None:
    # A forked child builds its own pool (and, for dmp, its own engine).
    with mp.Pool(2) as p:
        assert p.apply(f.square, (2,)) == 4  # the parent's engine is live
        q = mp.Queue()
        child = mp.Process(target=f.pool_in_child, args=(mp, q))
        child.start()
        try:
            assert q.get(timeout=20) == [i * i for i in range(10)]
            child.join(10)
            assert child.exitcode == 0
        finally:
            if child.is_alive():
                child.kill()
            child.join(5)
        assert p.apply(f.square, (3,)) == 9  # and still is


# --- worker lifetime, initializer, globals -----------------------------------------------


def test_maxtasksperchild(mp: Any) -> None:
    with mp.Pool(2, maxtasksperchild=1) as p:
        pids = [p.apply_async(f.getpid).get(10) for _ in range(5)]
    # Each worker exits after one task, so every task ran in a fresh process.
    assert len(set(pids)) == 5


def test_maxtasksperchild_many_in_flight(mp: Any) -> None:
    # Retiring workers race with new assignments: none may be lost.
    with mp.Pool(2, maxtasksperchild=1) as p:
        results = [p.apply_async(f.getpid) for _ in range(30)]
        pids = [r.get(20) for r in results]
    assert len(set(pids)) == 30


def test_maxtasksperchild_map(mp: Any) -> None:
    with mp.Pool(2, maxtasksperchild=1) as p:
        pids = p.map(f.getpid_slow, range(8), chunksize=1)
    assert len(set(pids)) > 2


def test_maxtasksperchild_must_be_positive(mp: Any) -> None:
    with pytest.raises(ValueError):
        mp.Pool(2, maxtasksperchild=0)


def test_initializer(mp: Any) -> None:
    token = f"init-{os.getpid()}-{time.monotonic()}"
    with mp.Pool(2, initializer=f.init_global, initargs=(token,)) as p:
        assert set(p.map(f.read_worker_global, range(10), chunksize=1)) == {token}
    # The initializer ran in the workers, not in the parent.
    assert f.WORKER_GLOBAL != token


def test_initializer_not_callable(mp: Any) -> None:
    with pytest.raises(TypeError):
        mp.Pool(2, initializer=42)


@pytest.mark.local_only("fork semantics: the nodes' workers were not forked from the caller")
def test_parent_globals_visible_in_workers(mp: Any) -> None:
    token = f"parent-{os.getpid()}-{time.monotonic()}"
    f.PARENT_GLOBAL = token
    try:
        with mp.Pool(2) as p:
            assert set(p.map(f.read_parent_global, range(6), chunksize=1)) == {token}
    finally:
        f.PARENT_GLOBAL = None


# --- faults: workers that die ----------------------------------------------------------------
# stdlib's Pool never notices a dead worker's task: map()/apply() hang forever
# (the pool replaces the process but the task is lost). dmp retries the task
# and, past the retry bound, fails it with WorkerLostError.


@pytest.mark.dmp_only
def test_worker_sigkilled_mid_map_is_retried(mp: Any, tmp_path: Any) -> None:
    with mp.Pool(2) as p:
        out = p.starmap(f.sigkill_once, [(str(tmp_path), i) for i in range(20)], chunksize=1)
    assert out == [i * i for i in range(20)]
    assert (tmp_path / "sigkill.marker").exists()


@pytest.mark.dmp_only
def test_worker_os_exit_mid_map_is_retried(mp: Any, tmp_path: Any) -> None:
    with mp.Pool(2) as p:
        out = p.starmap(f.exit_once, [(str(tmp_path), i) for i in range(20)], chunksize=1)
    assert out == [i * i for i in range(20)]
    assert (tmp_path / "exit.marker").exists()


@pytest.mark.dmp_only
def test_worker_sigkilled_apply_is_retried(mp: Any, tmp_path: Any) -> None:
    with mp.Pool(2) as p:
        assert p.apply(f.sigkill_once, (str(tmp_path), 7)) == 49


@pytest.mark.dmp_only
@pytest.mark.timeout(60)
def test_always_sigkill_apply_raises_worker_lost(mp: Any) -> None:
    with mp.Pool(2) as p:
        t0 = time.monotonic()
        with pytest.raises(mp.WorkerLostError) as info:
            p.apply(f.always_sigkill)
        assert time.monotonic() - t0 < 30
        assert isinstance(info.value, mp.ProcessError)
        assert info.value.exitcode == -signal.SIGKILL
        # The pool is still usable.
        assert p.apply(f.square, (6,)) == 36
        assert p.map(f.square, range(5)) == [0, 1, 4, 9, 16]


@pytest.mark.dmp_only
@pytest.mark.timeout(60)
def test_always_sigkill_map_raises_worker_lost(mp: Any) -> None:
    with mp.Pool(2) as p:
        t0 = time.monotonic()
        with pytest.raises(mp.WorkerLostError):
            p.map(f.always_sigkill, range(3))
        assert time.monotonic() - t0 < 30
        assert p.map(f.square, range(5)) == [0, 1, 4, 9, 16]


@pytest.mark.dmp_only
@pytest.mark.timeout(60)
def test_always_os_exit_raises_worker_lost(mp: Any) -> None:
    with mp.Pool(2) as p:
        t0 = time.monotonic()
        with pytest.raises(mp.WorkerLostError) as info:
            p.apply_async(f.always_exit).get(timeout=30)
        assert time.monotonic() - t0 < 30
        # The error explains itself: it carries the exit code.
        assert info.value.exitcode == 3
        assert p.apply(f.square, (2,)) == 4


@pytest.mark.dmp_only
@pytest.mark.timeout(60)
def test_worker_lost_error_callback(mp: Any) -> None:
    errors: list[BaseException] = []
    with mp.Pool(2) as p:
        r = p.apply_async(f.always_sigkill, error_callback=errors.append)
        with pytest.raises(mp.WorkerLostError):
            r.get(timeout=30)
        assert not r.successful()
    assert len(errors) == 1 and isinstance(errors[0], mp.WorkerLostError)


@pytest.mark.dmp_only
def test_raising_callback_leaves_the_pool_working(mp: Any, capfd: Any) -> None:
    # stdlib's result thread dies of the callback's exception: get() and every later result hang.
    def boom(_: Any) -> None:
        raise RuntimeError("callback went wrong")

    with mp.Pool(2) as p:
        assert p.apply_async(f.square, (3,), callback=boom).get(timeout=10) == 9
        assert p.map_async(f.square, range(20), chunksize=2, callback=boom).get(timeout=10) == [
            i * i for i in range(20)
        ]
        assert p.map(f.square, range(50)) == [i * i for i in range(50)]
    assert "callback went wrong" in capfd.readouterr().err


# --- cloudpickle: lambdas and closures (stdlib cannot pickle them) ------------------------------


@pytest.mark.dmp_only
def test_map_lambda(mp: Any) -> None:
    with mp.Pool(2) as p:
        assert p.map(lambda x: x + 1, range(5)) == [1, 2, 3, 4, 5]


@pytest.mark.dmp_only
def test_apply_closure(mp: Any) -> None:
    offset = 100

    def add_offset(x: int) -> int:
        return x + offset

    with mp.Pool(2) as p:
        assert p.apply(add_offset, (1,)) == 101
        assert list(p.imap(add_offset, range(3))) == [100, 101, 102]


@pytest.mark.dmp_only
def test_lambda_result_is_returned(mp: Any) -> None:
    # A lambda result is picklable with cloudpickle (stdlib: MaybeEncodingError).
    with mp.Pool(2) as p:
        fn = p.apply(f.identity, (lambda y: y * 3,))
    assert fn(2) == 6
