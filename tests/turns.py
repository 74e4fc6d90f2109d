"""Scenarios for callers taking turns at dmp's I/O, run against a local and a cluster pool.

tests/test_local_turns.py (the embedded reactor) and tests/cluster/test_link.py
(the client link) call these with their own pool, task functions and
timeouts (a cluster gets more slack).
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Callable
from typing import Any

import pytest

import dmp


def interrupt_maps_then_use(
    pool: Any, square: Callable[[int], int], *, rounds: int, seed: int, delay: tuple[float, float], check: int
) -> int:
    """SIGINT this process during ``rounds`` maps of tiny tasks, checking the pool after each.

    Returns how many maps the interrupt stopped (the caller asserts some did).
    """
    rng = random.Random(seed)
    interrupted = 0
    for _ in range(rounds):
        timer = threading.Timer(rng.uniform(*delay), os.kill, (os.getpid(), signal.SIGINT))
        try:
            try:
                # start() inside: on a loaded machine the timer can fire before start() returns
                timer.start()
                pool.map(square, range(20_000), chunksize=1)
            finally:
                timer.join()  # the interrupt may come after the map: catch it here too
        except KeyboardInterrupt:
            interrupted += 1
        assert pool.map_async(square, range(check), chunksize=1).get(timeout=30) == [i * i for i in range(check)]
    return interrupted


def many_threads_wait_at_once(pool: Any, square: Callable[[int], int], timeout: float) -> None:
    """Six threads, each waiting on 100 results in turn: every one gets its own."""
    errors: list[BaseException] = []

    def caller(k: int) -> None:
        try:
            for i in range(100):
                assert pool.apply_async(square, (k * 1000 + i,)).get(timeout=timeout) == (k * 1000 + i) ** 2
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * timeout)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def follower_served_after_leader_leaves(
    pool: Any, square: Callable[[int], int], nap: Callable[[float], float], timeout: float
) -> None:
    slow = pool.apply_async(nap, (1.0,))
    got: list[float] = []
    follower = threading.Thread(target=lambda: got.append(slow.get(timeout=timeout)))
    follower.start()
    for i in range(50):  # the main thread leads and leaves, again and again
        assert pool.apply_async(square, (i,)).get(timeout=timeout) == i * i
    follower.join(timeout)
    assert got == [1.0]


def callbacks_run_with_nobody_waiting(pool: Any, square: Callable[[int], int], timeout: float) -> None:
    done = threading.Event()
    got: list[int] = []

    def collect(value: int) -> None:
        got.append(value)
        if len(got) == 100:
            done.set()

    for i in range(100):
        pool.apply_async(square, (i,), callback=collect)
    assert done.wait(timeout), f"only {len(got)} callbacks ran"
    assert sorted(got) == sorted(i * i for i in range(100))


def get_with_a_timeout_returns_in_time(pool: Any, nap: Callable[[float], float], timeout: float) -> None:
    """get(timeout) gives up in time, and the result still arrives afterwards."""
    result = pool.apply_async(nap, (1.5,))
    with pytest.raises(dmp.TimeoutError):  # raised only while the result is not there
        result.get(timeout=0.2)
    assert result.get(timeout=timeout) == 1.5
