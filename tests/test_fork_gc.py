"""A local pool's first workers freeze the collector's objects as they start
and unfreeze them (dmp.node.supervisor, Supervisor._launch): nothing stays
frozen, the program's garbage is still collected, by young collections too,
a dropped pool needs no collection at all, and a program that froze objects
itself keeps them frozen."""

from __future__ import annotations

import gc
import os
import time
import weakref
from typing import Any

import pytest

import dmp

pytestmark = pytest.mark.timeout(120)


class Node:
    def __init__(self) -> None:
        self.other: Any = None


# Made before any pool: inherited by every forked worker.
INHERITED = Node()


def gc_view(_: Any = None) -> tuple[int, bool]:
    """In a worker: its freeze count, and whether the collector sees what the fork gave it."""
    return gc.get_freeze_count(), any(o is INHERITED for o in gc.get_objects())


def test_nothing_stays_frozen_in_the_pool_or_its_workers() -> None:
    assert gc.get_freeze_count() == 0
    with dmp.Pool(2, maxtasksperchild=1) as pool:
        assert gc.get_freeze_count() == 0
        # Each task in a fresh worker: the first two forked at the start, the rest replacements.
        for count, seen in pool.map(gc_view, range(4), chunksize=1):
            assert count == 0 and seen
    assert gc.get_freeze_count() == 0


def test_cyclic_garbage_made_before_a_pool_is_still_collected() -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    with dmp.Pool(2) as pool:
        assert pool.apply(gc_view)[0] == 0
        gc.collect()  # a frozen object would survive this
        assert gone() is None


def test_cyclic_garbage_made_before_a_pool_is_freed_by_a_young_collection() -> None:
    # Frozen and unfrozen in the pool's process, it went to the oldest generation.
    gc.collect()
    threshold = gc.get_threshold()
    gc.set_threshold(1_000_000)  # no collection of the collector's own until the pool has started
    try:
        a = Node()
        a.other = a
        gone = weakref.ref(a)
        del a
        with dmp.Pool(2) as pool:
            assert pool.apply(abs, (-1,)) == 1
            gc.collect(1)  # the young generations only
            assert gone() is None
    finally:
        gc.set_threshold(*threshold)


def test_objects_the_program_froze_stay_frozen_in_the_pool_and_its_workers() -> None:
    gc.freeze()
    try:
        assert gc.get_freeze_count() > 0
        with dmp.Pool(2) as pool:
            # (Frozen objects freed since leave the count; an unfreeze empties it.)
            assert gc.get_freeze_count() > 0
            count, _ = pool.apply(gc_view)
            assert count > 0  # the worker did not unfreeze the program's objects
    finally:
        gc.unfreeze()


def test_pools_started_one_after_another_do_not_keep_their_fds() -> None:
    # Frozen and unfrozen in the pool's process, each pool's objects went to the
    # oldest generation and were never collected: an eventfd kept per pool.
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    with dmp.Pool(2) as pool:
        pool.apply(abs, (-1,))
    before = open_fds()
    for _ in range(150):
        with dmp.Pool(2) as pool:
            assert pool.apply(abs, (-1,)) == 1
    assert open_fds() < before + 75


def test_a_pool_dropped_running_ends_its_workers_once_its_result_is_in() -> None:
    # With the collector off, only reference counting can free it (and it
    # then says so, as multiprocessing's does); its reference cycles kept it,
    # and its workers, until a collection.
    gc.disable()
    try:
        pool = dmp.Pool(2)
        pids = [w.pid for w in pool._pool]
        result = pool.apply_async(abs, (-3,))
        del pool
        with pytest.warns(ResourceWarning, match="unclosed running"):
            assert result.get(timeout=60) == 3
            del result  # (the thread that completed it may be the engine's: it terminates the pool)
            deadline = time.monotonic() + 60
            while any(_exists(pid) for pid in pids):  # reaped by terminate()
                assert time.monotonic() < deadline, "the dropped pool's workers are still there"
                time.sleep(0.02)
    finally:
        gc.enable()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # (a zombie, not reaped yet, still exists)
    except ProcessLookupError:
        return False
    return True
