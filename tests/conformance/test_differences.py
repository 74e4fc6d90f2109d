"""Pins for the differences docs/differences.md lists that no other
conformance test holds: what a terminated pool's pending results do, the
extra Pool keywords, Pool(context=), and a managed Condition's lock."""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import types
from typing import Any

import pytest

from . import _funcs as f

pytestmark = pytest.mark.timeout(60)


@pytest.mark.dmp_only
def test_terminate_fails_the_pending_results(mp: Any) -> None:
    # stdlib: such a result never becomes ready (get() waits until its timeout).
    p = mp.Pool(1)
    try:
        running = p.apply_async(f.sleep_then_return, (60, "never"))
        queued = p.apply_async(f.square, (3,))
    finally:
        p.terminate()
        p.join()
    for result in (running, queued):
        with pytest.raises(mp.ProcessError):
            result.get(timeout=30)


@pytest.mark.dmp_only
def test_extra_pool_keywords(mp: Any) -> None:
    with mp.Pool(1, max_retries=0, modules=(f,)) as p:
        assert p.apply(f.square, (4,)) == 16


@pytest.mark.local_only(
    "the start method does not apply in cluster mode (SPEC.md): tasks run in the nodes' workers"
)
def test_pool_context_keyword_chooses_the_start_method(mp: Any) -> None:
    if isinstance(mp, types.ModuleType):
        make, ctx = mp.Pool, mp.get_context("spawn")
    else:
        make, ctx = multiprocessing.pool.Pool, multiprocessing.get_context("spawn")
    f.PARENT_GLOBAL = "set by the parent"
    try:
        with make(1, context=ctx) as p:
            assert p.apply(f.read_parent_global) is None  # a spawned worker: a fresh interpreter
    finally:
        f.PARENT_GLOBAL = None


@pytest.mark.stdlib_only
def test_managed_condition_takes_a_given_lock(mp: Any) -> None:
    with mp.Manager() as m:
        lock = m.Lock()
        cond = m.Condition(lock)
        with cond:
            assert not lock.acquire(False)
        assert lock.acquire(False)
        lock.release()


@pytest.mark.dmp_only
def test_managed_condition_refuses_a_given_lock(mp: Any) -> None:
    with mp.Manager() as m:
        with pytest.raises(TypeError, match="own lock"):
            m.Condition(m.Lock())
        cond = m.Condition()
        with cond:
            cond.notify_all()
