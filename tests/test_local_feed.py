"""A local map of a few chunks is fed by its caller (Feeder.feed_here), not the feeder thread;
everything else about it (failures, deaths, order behind other jobs, callbacks) is as before."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

import dmp
from dmp.client import feeder

pytestmark = pytest.mark.timeout(120)


def square(x: int) -> int:
    return x * x


def die_once(args: tuple[int, str]) -> int:
    x, flag = args
    if x == 5 and not os.path.exists(flag):
        with open(flag, "w"):
            pass
        os._exit(1)
    return x * x


@pytest.fixture
def pool() -> Any:
    p = dmp.Pool(2)
    try:
        yield p
    finally:
        p.terminate()
        p.join()


def test_a_small_map_is_fed_by_its_caller(pool: Any) -> None:
    assert pool.map(square, range(1000)) == [x * x for x in range(1000)]  # 8 chunks
    assert pool.starmap(pow, [(x, 2) for x in range(50)], chunksize=3) == [x * x for x in range(50)]
    assert pool.map_async(square, range(10)).get(timeout=60) == [x * x for x in range(10)]
    assert pool._feeder._thread is None  # the feeder thread never started


def test_a_map_of_many_chunks_still_goes_to_the_feeder(pool: Any) -> None:
    n = feeder.FEED_HERE_MAX + 1
    assert pool.map(square, range(n), chunksize=1) == [x * x for x in range(n)]
    assert pool._feeder._thread.ident is not None


def test_a_chunk_that_does_not_pickle_fails_the_map_from_the_callers_thread(pool: Any) -> None:
    with pytest.raises(Exception, match=r"pickle|lock"):
        pool.map(square, [1, 2, threading.Lock(), 4], chunksize=1)
    assert pool.map(square, range(4)) == [0, 1, 4, 9]


def test_a_worker_dying_under_a_caller_fed_map_is_retried(pool: Any, tmp_path: Any) -> None:
    flag = str(tmp_path / "died")
    assert pool.map(die_once, [(x, flag) for x in range(20)], chunksize=2) == [x * x for x in range(20)]
    assert os.path.exists(flag)


def test_a_map_from_a_callback_on_the_turn_is_left_to_the_feeder(pool: Any) -> None:
    got: list[Any] = []
    done = threading.Event()

    def callback(_: Any) -> None:  # runs on the reactor's turn: it must not feed there
        got.append(pool.map_async(square, range(8), callback=lambda r: (got.append(r), done.set())))

    pool.apply_async(square, (1,), callback=callback)
    assert done.wait(60)
    assert got[1] == [x * x for x in range(8)]
    assert pool._feeder._thread.ident is not None


def test_a_small_map_waits_behind_an_imap_the_feeder_is_still_feeding(pool: Any) -> None:
    gate = threading.Event()

    def slow_items() -> Any:  # the feeder is busy with this job until the gate opens
        for x in range(10):
            if x == 5:
                gate.wait(30)
            yield x

    lazy = pool.imap(square, slow_items(), chunksize=1)
    result = pool.map_async(square, range(100))  # the feeder has a job: not fed here
    assert not result.ready()
    gate.set()
    assert result.get(timeout=60) == [x * x for x in range(100)]
    assert list(lazy) == [x * x for x in range(10)]


class InterruptOnPickle:
    """Pickling it sends this process a SIGINT (as a Ctrl-C in the middle of feeding a map)."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __reduce__(self) -> Any:
        import signal

        os.kill(os.getpid(), signal.SIGINT)
        return (int, (self.x,))


def test_ctrl_c_while_the_caller_feeds_a_map_waits_for_the_job_to_be_fed(pool: Any) -> None:
    # Raised once every chunk is sent and the job ended: the map runs to its end
    # in the background, so close() and join() return.
    items: list[Any] = [1, 2, InterruptOnPickle(3), 4, 5, 6]
    with pytest.raises(KeyboardInterrupt):
        pool.map(square, items, chunksize=2)
    assert pool.map(square, range(10)) == [x * x for x in range(10)]
    pool.close()
    pool.join()
    assert pool._feeder._thread is None  # fed on this thread
