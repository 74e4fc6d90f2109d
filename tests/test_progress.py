"""progress= on the map family: a tqdm bar that advances as results arrive.

Every behaviour runs against a local pool and a pool on a LocalCluster (one
node, two processes). The bar writes to an ``io.StringIO`` with
``bar_format="{n}/{total}"``, so its last line says how far it got and a
closed bar (``leave=True``) ends with a newline; ``tqdm._instances`` is empty
once every bar is closed.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tqdm import tqdm

import dmp

pytestmark = pytest.mark.timeout(120)

WAIT_S = 60.0


def square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


def fail_on_5(x: int) -> int:
    if x == 5:
        raise ValueError("item 5 is bad")
    return x


def nap(x: int) -> int:
    time.sleep(0.02)
    return x


class Bar:
    """The dict to pass as progress=, and what the bar wrote."""

    def __init__(self, **extra: Any) -> None:
        self.file = io.StringIO()
        self.options = {"file": self.file, "bar_format": "{n}/{total}", "mininterval": 0, **extra}

    @property
    def text(self) -> str:
        return self.file.getvalue()

    def last(self) -> str:
        """The bar's last state, "n/total"."""
        return self.text.rstrip("\n").split("\r")[-1]

    def closed(self) -> bool:
        return self.text.endswith("\n")

    def shown(self) -> int:
        last = self.last()
        return int(last.split("/")[0]) if last else 0


def wait_until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with dmp.LocalCluster(nodes=1, processes=2) as c:
        yield c


@pytest.fixture(params=["local", "cluster"])
def pool(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "local":
        p = dmp.Pool(2)
    else:
        c = request.getfixturevalue("cluster")
        p = dmp.Pool(2, address=c.address, authkey=c.authkey, modules=[sys.modules[__name__]])
    try:
        yield p
    finally:
        p.terminate()
        p.join()
    assert not tqdm._instances, "a bar was left open"


@pytest.mark.parametrize("chunksize", [1, 7])
def test_map_bar_counts_every_item_and_knows_its_total(pool: Any, chunksize: int) -> None:
    bar = Bar()
    assert pool.map(square, range(100), chunksize, progress=bar.options) == [x * x for x in range(100)]
    assert bar.last() == "100/100" and bar.closed()
    bar = Bar()
    assert pool.starmap(add, [(i, i) for i in range(30)], chunksize, progress=bar.options) == [2 * i for i in range(30)]
    assert bar.last() == "30/30" and bar.closed()
    bar = Bar()
    assert pool.map_async(square, range(50), chunksize, progress=bar.options).get(WAIT_S) == [x * x for x in range(50)]
    assert bar.last() == "50/50" and bar.closed()
    bar = Bar()
    assert pool.starmap_async(add, [(1, 2)] * 9, chunksize, progress=bar.options).get(WAIT_S) == [3] * 9
    assert bar.last() == "9/9" and bar.closed()


@pytest.mark.parametrize("chunksize", [1, 4])
def test_imap_bars_count_every_item(pool: Any, chunksize: int) -> None:
    bar = Bar()
    assert list(pool.imap(square, range(50), chunksize, progress=bar.options)) == [x * x for x in range(50)]
    assert bar.last() == "50/50" and bar.closed()
    bar = Bar()
    assert sorted(pool.imap_unordered(square, range(50), chunksize, progress=bar.options)) == [x * x for x in range(50)]
    assert bar.last() == "50/50" and bar.closed()


def test_a_generator_has_no_total(pool: Any) -> None:
    bar = Bar()
    assert list(pool.imap(square, (x for x in range(30)), 4, progress=bar.options)) == [x * x for x in range(30)]
    assert bar.last() == "30/None" and bar.closed()
    bar = Bar()
    assert sorted(pool.imap_unordered(square, (x for x in range(30)), progress=bar.options)) == [x * x for x in range(30)]
    assert bar.last() == "30/None" and bar.closed()


def test_an_empty_map_closes_its_bar(pool: Any) -> None:
    bar = Bar()
    assert pool.map(square, [], progress=bar.options) == []
    assert bar.last() == "0/0" and bar.closed()
    bar = Bar()
    assert list(pool.imap(square, [], progress=bar.options)) == []
    assert bar.closed()


def test_progress_true_draws_on_stderr(pool: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert pool.map(square, range(40), progress=True) == [x * x for x in range(40)]
    assert "40/40" in capsys.readouterr().err


def test_executor_map_bar(cluster: Any) -> None:
    dmp.serialization.send_by_value([sys.modules[__name__]])  # Executor has no modules= yet
    for address, authkey in ((None, None), (cluster.address, cluster.authkey)):
        with dmp.Executor(2, address=address, authkey=authkey) as ex:
            bar = Bar()
            assert list(ex.map(add, range(10), range(20), progress=bar.options)) == [2 * i for i in range(10)]
            assert bar.last() == "10/10" and bar.closed()
            bar = Bar()
            assert list(ex.map(add, range(10), (i for i in range(10)), chunksize=3, progress=bar.options)) == [
                2 * i for i in range(10)
            ]
            assert bar.last() == "10/None" and bar.closed()
    assert not tqdm._instances


def test_a_failing_task_closes_the_bar_and_reaches_the_caller(pool: Any) -> None:
    bar = Bar()
    with pytest.raises(ValueError, match="item 5 is bad"):
        pool.map(fail_on_5, range(20), 1, progress=bar.options)
    assert bar.last() == "20/20" and bar.closed()
    bar = Bar()
    with pytest.raises(ValueError, match="item 5 is bad"):
        list(pool.imap(fail_on_5, range(20), 3, progress=bar.options))
    # imap raised at the item's place; the other chunks still run and count.
    wait_until(bar.closed, "the imap bar to close")
    assert bar.last() == "20/20"


def test_terminate_closes_the_bar(pool: Any) -> None:
    bar = Bar()
    result = pool.map_async(nap, range(300), 1, progress=bar.options)
    wait_until(lambda: bar.shown() >= 1, "the first result")
    pool.terminate()
    assert bar.closed()
    assert 1 <= bar.shown() < 300
    with pytest.raises(dmp.ProcessError):
        result.get(WAIT_S)


@pytest.mark.parametrize("call", ["map", "imap"])
def test_ctrl_c_while_waiting_closes_the_bar(pool: Any, call: str) -> None:
    bar = Bar()

    def interrupt() -> None:
        wait_until(lambda: bar.shown() >= 1, "the first result")
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Thread(target=interrupt)
    timer.start()
    interrupted = False
    try:
        try:
            if call == "map":
                pool.map(nap, range(300), 1, progress=bar.options)
            else:
                for _ in pool.imap(nap, range(300), 1, progress=bar.options):
                    pass
        finally:
            timer.join(WAIT_S)  # the interrupt may land after the call: it is caught here too
    except KeyboardInterrupt:
        interrupted = True
    assert interrupted
    assert bar.closed() and bar.shown() < 300

def test_progress_needs_tqdm_and_a_bool_or_dict(monkeypatch: pytest.MonkeyPatch) -> None:
    with dmp.Pool(1) as pool:
        with pytest.raises(TypeError, match="progress="):
            pool.map(square, range(3), progress="yes")
        monkeypatch.setitem(sys.modules, "tqdm", None)  # as if tqdm were not installed
        with pytest.raises(ImportError, match=r"dmp-multiprocessing\[progress\]"):
            pool.map(square, range(3), progress=True)
        with pytest.raises(ImportError, match=r"dmp-multiprocessing\[progress\]"):
            pool.imap(square, range(3), progress={"file": io.StringIO()})
        assert pool.map(square, range(3)) == [0, 1, 4]  # without a bar all is well


def test_the_bar_is_fed_in_batches_and_close_shows_the_rest() -> None:
    """Unit: a stream of outcomes reaches tqdm in a few updates (at most one per mininterval)."""
    from dmp.client import progress

    bar = Bar(mininterval=0.1)
    p = progress.start(bar.options, 100_000)
    assert p is not None
    updates: list[int] = []
    real_update = p._bar.update
    p._bar.update = lambda n: (updates.append(n), real_update(n))  # type: ignore[method-assign]
    for _ in range(100_000):
        p.advance(1)
    p.close()
    p.close()  # idempotent
    assert bar.last() == "100000/100000" and bar.closed()
    assert sum(updates) == 100_000 and len(updates) < 1000
