"""Executor conformance. The oracle is concurrent.futures.ProcessPoolExecutor
(fork context); dmp's counterpart is dmp.Executor."""

from __future__ import annotations

import concurrent.futures as cf
import os
from typing import Any

import pytest

from . import _funcs as f

pytestmark = pytest.mark.timeout(30)


def test_is_a_concurrent_futures_executor(executor_cls: Any) -> None:
    with executor_cls(max_workers=2) as ex:
        assert isinstance(ex, cf.Executor)


def test_submit(executor_cls: Any) -> None:
    with executor_cls(max_workers=2) as ex:
        fut = ex.submit(f.add_kw, 1, b=2, c=3)
        assert isinstance(fut, cf.Future)
        assert fut.result(timeout=10) == 321
        assert fut.done()
        assert fut.exception() is None
        assert ex.submit(f.getpid).result(10) != os.getpid()


def test_submit_many_as_completed(executor_cls: Any) -> None:
    with executor_cls(max_workers=2) as ex:
        futs = {ex.submit(f.square, i): i for i in range(30)}
        got = {futs[fut]: fut.result() for fut in cf.as_completed(futs, timeout=20)}
    assert got == {i: i * i for i in range(30)}


def test_done_callback(executor_cls: Any) -> None:
    seen: list[Any] = []
    with executor_cls(max_workers=2) as ex:
        fut = ex.submit(f.square, 9)
        fut.add_done_callback(lambda fu: seen.append(fu.result()))
        cf.wait([fut], timeout=10)
    assert seen == [81]


def test_result_timeout(executor_cls: Any) -> None:
    with executor_cls(max_workers=2) as ex:
        fut = ex.submit(f.sleep_then_return, 1.0, "late")
        with pytest.raises(cf.TimeoutError):
            fut.result(timeout=0.05)
        assert fut.result(timeout=10) == "late"


def test_exception(executor_cls: Any) -> None:
    with executor_cls(max_workers=2) as ex:
        fut = ex.submit(f.raise_task_error, "x")
        exc = fut.exception(timeout=10)
        assert type(exc) is f.TaskError
        assert str(exc) == "task failed on 'x'"
        with pytest.raises(f.TaskError) as info:
            fut.result()
    assert info.value.__cause__ is not None
    assert "raise_task_error" in str(info.value.__cause__)


@pytest.mark.parametrize("chunksize", [1, 7, 1000])
def test_map_chunksize(executor_cls: Any, chunksize: int) -> None:
    with executor_cls(max_workers=2) as ex:
        assert list(ex.map(f.square, range(100), chunksize=chunksize)) == [
            i * i for i in range(100)
        ]


def test_map_several_iterables(executor_cls: Any) -> None:
    with executor_cls(max_workers=2) as ex:
        assert list(ex.map(f.add, range(5), range(10, 15))) == [10, 12, 14, 16, 18]


def test_map_empty(executor_cls: Any) -> None:
    with executor_cls(max_workers=2) as ex:
        assert list(ex.map(f.square, [])) == []


def test_map_exception_on_iteration(executor_cls: Any) -> None:
    with executor_cls(max_workers=2) as ex:
        it = ex.map(f.fail_on_three, range(6), chunksize=1)
        assert [next(it) for _ in range(3)] == [0, 1, 4]
        with pytest.raises(ValueError, match="three is bad"):
            next(it)


def test_map_timeout(executor_cls: Any) -> None:
    with executor_cls(max_workers=2) as ex:
        it = ex.map(f.sleep_then_return, [1.0], timeout=0.05)
        with pytest.raises(cf.TimeoutError):
            list(it)


def test_shutdown_wait(executor_cls: Any) -> None:
    ex = executor_cls(max_workers=2)
    try:
        futs = [ex.submit(f.sleep_then_return, 0.1, i) for i in range(4)]
        ex.shutdown(wait=True)
        assert all(fut.done() for fut in futs)
        assert [fut.result() for fut in futs] == [0, 1, 2, 3]
        with pytest.raises(RuntimeError):
            ex.submit(f.square, 1)
    finally:
        ex.shutdown(wait=True)


def test_shutdown_cancel_futures(executor_cls: Any) -> None:
    ex = executor_cls(max_workers=1)
    try:
        futs = [ex.submit(f.sleep_then_return, 1.0, i) for i in range(10)]
        ex.shutdown(wait=True, cancel_futures=True)
        cancelled = [fut for fut in futs if fut.cancelled()]
        finished = [fut for fut in futs if not fut.cancelled()]
        assert len(cancelled) >= 5
        assert all(fut.done() for fut in futs)
        assert all(fut.result() == futs.index(fut) for fut in finished)
    finally:
        ex.shutdown(wait=True)


def test_shutdown_is_idempotent(executor_cls: Any) -> None:
    ex = executor_cls(max_workers=2)
    assert ex.submit(f.square, 3).result(10) == 9
    ex.shutdown()
    ex.shutdown()


def test_context_manager_waits(executor_cls: Any) -> None:
    with executor_cls(max_workers=2) as ex:
        fut = ex.submit(f.sleep_then_return, 0.2, "done")
    # __exit__ is shutdown(wait=True): the future is finished.
    assert fut.done()
    assert fut.result(0) == "done"
    with pytest.raises(RuntimeError):
        ex.submit(f.square, 1)


def test_max_workers_must_be_positive(executor_cls: Any) -> None:
    with pytest.raises(ValueError):
        executor_cls(max_workers=0)


def test_max_workers_bounds_processes(executor_cls: Any) -> None:
    with executor_cls(max_workers=2) as ex:
        pids = set(ex.map(f.getpid_slow, range(12)))
    assert 1 <= len(pids) <= 2


# --- dmp improvements ------------------------------------------------------------------


@pytest.mark.dmp_only
def test_submit_lambda(executor_cls: Any) -> None:
    # ProcessPoolExecutor pickles the callable: a lambda fails there.
    with executor_cls(max_workers=2) as ex:
        assert ex.submit(lambda x: x * 2, 21).result(10) == 42
        assert list(ex.map(lambda x: -x, range(3))) == [0, -1, -2]


@pytest.mark.dmp_only
@pytest.mark.timeout(60)
def test_worker_killed_is_retried_executor_survives(executor_cls: Any, tmp_path: Any) -> None:
    # ProcessPoolExecutor marks itself broken (BrokenProcessPool) when one
    # worker dies and fails every pending future; dmp retries the task.
    with executor_cls(max_workers=2) as ex:
        futs = [ex.submit(f.sigkill_once, str(tmp_path), i) for i in range(10)]
        assert [fut.result(timeout=30) for fut in futs] == [i * i for i in range(10)]
        assert ex.submit(f.square, 4).result(10) == 16


@pytest.mark.dmp_only
@pytest.mark.timeout(60)
def test_always_killed_task_raises_worker_lost(executor_cls: Any) -> None:
    import dmp

    with executor_cls(max_workers=2) as ex:
        with pytest.raises(dmp.WorkerLostError):
            ex.submit(f.always_sigkill).result(timeout=30)
        # Only that task failed: the executor keeps working.
        assert list(ex.map(f.square, range(4))) == [0, 1, 4, 9]
