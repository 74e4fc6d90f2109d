"""Drop-in details real programs rely on: every name of multiprocessing,
start methods and contexts, the Pool's documented private attributes,
references released when a job ends, warnings, and cancelled futures."""

from __future__ import annotations

import gc
import multiprocessing
import os
import time
import types
import warnings
import weakref
from typing import Any

import pytest

from . import _funcs as f

pytestmark = pytest.mark.timeout(60)


class Token:
    """A task argument/result a weak reference can watch."""

    def __init__(self, n: int) -> None:
        self.n = n


def same(token: Token) -> Token:
    return token


def _module_of(mp: Any) -> Any:
    """The module behind ``mp``: multiprocessing itself for the stdlib context."""
    return mp if isinstance(mp, types.ModuleType) else multiprocessing


def _until(cond: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_every_multiprocessing_name_exists(mp: Any) -> None:
    module = _module_of(mp)
    assert set(multiprocessing.__all__) - set(dir(module)) == set()
    for name in multiprocessing.__all__:
        assert getattr(module, name) is not None, name


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_context_offers_the_module_api(mp: Any, method: str) -> None:
    ctx = mp.get_context(method)
    for name in multiprocessing.__all__:
        if hasattr(multiprocessing.get_context(method), name):
            assert getattr(ctx, name) is not None, name


def test_module_level_names_match(mp: Any) -> None:
    module = _module_of(mp)
    assert set(multiprocessing.__all__) <= set(module.__all__)
    assert set(module.get_all_start_methods()) >= {"fork", "spawn", "forkserver"}
    assert module.reducer is multiprocessing.reducer or hasattr(module.reducer, "ForkingPickler")
    assert module.get_logger().name == "multiprocessing"


@pytest.mark.local_only("the start method does not apply in cluster mode (SPEC.md): tasks run in the nodes' workers")
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_context_pool_and_process_start_as_asked(mp: Any, method: str) -> None:
    ctx = mp.get_context(method)
    assert ctx.get_start_method() == method
    f.PARENT_GLOBAL = "set by the parent"
    try:
        with ctx.Pool(2) as p:
            seen = p.map(f.read_parent_global, range(4))
            workers = p._pool
        # Fork: globals set before the pool are visible; spawn and forkserver
        # run a fresh interpreter, where they are not.
        expected = "set by the parent" if method == "fork" else None
        assert seen == [expected] * 4
        assert workers
    finally:
        f.PARENT_GLOBAL = None
    q = ctx.Queue()
    proc = ctx.Process(target=f.put_pid, args=(q,))
    proc.start()
    assert q.get(timeout=30) == proc.pid
    proc.join(30)
    assert proc.exitcode == 0


def test_concrete_context_start_method_is_fixed(mp: Any) -> None:
    ctx = mp.get_context("spawn")
    with pytest.raises(ValueError):
        ctx.set_start_method("fork")
    with pytest.raises(ValueError):
        mp.get_context("no-such-method")


@pytest.mark.local_only(
    "the start method does not apply in cluster mode (SPEC.md): a function sent by value carries the parent's "
    "globals it reads, as they were when it was pickled"
)
def test_set_start_method_is_honoured(mp: Any) -> None:
    module = _module_of(mp)
    before = module.get_start_method(allow_none=True)
    module.set_start_method("spawn", force=True)
    try:
        with pytest.raises(RuntimeError):
            module.set_start_method("fork")
        assert module.get_start_method() == "spawn"
        f.PARENT_GLOBAL = "set by the parent"
        with module.Pool(1) as p:
            assert p.apply(f.read_parent_global) is None
    finally:
        f.PARENT_GLOBAL = None
        module.set_start_method(before, force=True)


def test_pool_cache_lists_pending_results(mp: Any) -> None:
    with mp.Pool(1) as p:
        result = p.apply_async(f.sleep_then_return, (0.5, "x"))
        assert len(p._cache) == 1
        assert result.get(30) == "x"
        assert _until(lambda: not p._cache)


def test_map_keeps_no_reference_after_it_returns(mp: Any) -> None:
    with mp.Pool(2) as p:
        args = [Token(i) for i in range(20)]
        out = p.map(same, args)
        assert [t.n for t in out] == list(range(20))
        refs = [weakref.ref(x) for x in args + out]
        del args, out

        def all_gone() -> bool:
            gc.collect()
            return all(r() is None for r in refs)

        assert _until(all_gone)


def test_initializer_runs_without_waiting_for_a_task(mp: Any) -> None:
    # stdlib runs it at worker start; a cluster pool's workers are shared, so
    # each slot the pool may use runs it once, at once when free (docs/differences.md).
    q = mp.Queue()
    p = mp.Pool(1, f.put_args, (q, "initialised"))
    try:
        # No task was submitted: the initializer still ran.
        assert q.get(timeout=30) == (("initialised",), {})
    finally:
        p.terminate()
        p.join()


def test_running_pool_garbage_collected_warns(mp: Any) -> None:
    p = mp.Pool(1)
    assert p.apply(f.square, (3,)) == 9
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del p
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) and "unclosed running" in str(w.message) for w in caught)


def _record(path: str, i: int) -> int:
    time.sleep(0.3)
    with open(path, "a") as fh:
        fh.write(f"{i}\n")
    return i


def test_cancelled_futures_never_run(executor_cls: Any, tmp_path: Any) -> None:
    path = os.fspath(tmp_path / "ran")
    ex = executor_cls(max_workers=1)
    try:
        futs = [ex.submit(_record, path, i) for i in range(12)]
        ex.shutdown(wait=True, cancel_futures=True)
        ran = sorted(int(x) for x in open(path).read().split()) if os.path.exists(path) else []
        finished = [i for i, fut in enumerate(futs) if not fut.cancelled()]
        assert sum(fut.cancelled() for fut in futs) >= 6
        # Exactly the futures that were not cancelled ran, each once.
        assert ran == finished
        assert all(futs[i].result() == i for i in finished)
    finally:
        ex.shutdown(wait=True)


def _wait_at(barrier: Any) -> int:
    return int(barrier.wait(30))


def test_default_executor_is_as_wide_as_default_pool(mp: Any) -> None:
    # Executor() (max_workers=None) runs as many calls at once as Pool() has
    # workers: the CPU count locally, every worker slot of a cluster.
    with mp.Pool() as p:
        width = p._processes
    if isinstance(mp, types.ModuleType):
        ex = mp.Executor()
    else:
        from concurrent.futures import ProcessPoolExecutor

        ex = ProcessPoolExecutor(mp_context=mp)
    with mp.Manager() as m, ex:
        barrier = m.Barrier(width)  # passes only once `width` calls wait at once
        assert sorted(ex.map(_wait_at, [barrier] * width)) == list(range(width))
