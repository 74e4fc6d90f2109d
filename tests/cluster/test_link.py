"""The client link's leader/follower I/O (dmp/remote.py) against a real manager and node.

A caller waiting on a result serves the socket itself; other waiters follow
and are served by the leader, or by the link's thread once it leaves.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import dmp
from dmp import _config
from dmp.client import link as link_mod
from dmp.client import results
from dmp.wire import transport
from tests import turns
from tests.byvalue import pickled_by_value

from .conftest import Cluster, start_cluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def _functions_by_value() -> Iterator[None]:
    """This module's functions travel by value (nodes cannot import tests/), only while its tests run."""
    with pickled_by_value(sys.modules[__name__]):
        yield


def square(x: int) -> int:
    return x * x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.fixture(scope="module")
def one_node() -> Iterator[Cluster]:
    c = start_cluster(nodes=1)
    try:
        yield c
    finally:
        c.stop()


def test_a_waiting_caller_receives_its_own_results(one_node, monkeypatch) -> None:
    threads: collections.Counter[str] = collections.Counter()
    original = results.ApplyResult.on_result

    def on_result(self, *args):  # type: ignore[no-untyped-def]
        threads[threading.current_thread().name] += 1
        return original(self, *args)

    monkeypatch.setattr(results.ApplyResult, "on_result", on_result)
    with dmp.Pool(2, address=one_node.address) as pool:
        for i in range(300):
            assert pool.apply_async(square, (i,)).get(timeout=30) == i * i
    # The link's thread may take the odd one (it serves whenever nobody leads),
    # but a lone caller waiting on each result is the one that receives it.
    assert threads[threading.main_thread().name] > 150, threads


def test_many_threads_waiting_at_once_all_get_their_results(one_node) -> None:
    with dmp.Pool(2, address=one_node.address) as pool:
        turns.many_threads_wait_at_once(pool, square, timeout=30)


def test_a_follower_is_served_after_the_leader_leaves(one_node) -> None:
    with dmp.Pool(2, address=one_node.address) as pool:
        turns.follower_served_after_leader_leaves(pool, square, nap, timeout=30)


def test_get_with_a_timeout_returns_in_time_and_the_result_still_arrives(one_node) -> None:
    with dmp.Pool(2, address=one_node.address) as pool:
        turns.get_with_a_timeout_returns_in_time(pool, nap, timeout=30)


def test_a_callback_may_wait_on_another_result(one_node) -> None:
    with dmp.Pool(2, address=one_node.address) as pool:
        inner = pool.apply_async(nap, (0.3,))
        seen: list[float] = []
        outer = pool.apply_async(square, (3,), callback=lambda _: seen.append(inner.get(timeout=30)))
        assert outer.get(timeout=30) == 9
        assert seen == [0.3]


def test_a_raising_callback_is_reported_and_the_link_keeps_serving(one_node, capfd) -> None:
    def boom(_: int) -> None:
        raise RuntimeError("callback went wrong")

    with dmp.Pool(2, address=one_node.address) as pool:
        pool.apply_async(square, (2,), callback=boom).wait(30)
        # The report is printed by whichever thread ran the callback, before it serves the next result.
        assert pool.apply_async(square, (5,)).get(timeout=30) == 25
        assert pool.map(square, range(100)) == [i * i for i in range(100)]
    assert "callback went wrong" in capfd.readouterr().err


def test_callbacks_run_with_nobody_waiting(one_node) -> None:
    with dmp.Pool(2, address=one_node.address) as pool:
        turns.callbacks_run_with_nobody_waiting(pool, square, timeout=30)


def test_proxy_calls_from_many_threads(one_node) -> None:
    manager = dmp.Manager(address=one_node.address)
    queue = manager.Queue()
    counts = manager.dict()
    got: list[int] = []
    lock = threading.Lock()

    def produce(k: int) -> None:
        for i in range(100):
            queue.put(k * 1000 + i)

    def consume() -> None:
        for _ in range(200):
            item = queue.get(timeout=30)
            with lock:
                got.append(item)

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    threads += [threading.Thread(target=consume) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == sorted(k * 1000 + i for k in range(4) for i in range(100))
    for k in range(20):
        counts[k] = k
    assert dict(counts.items()) == {k: k for k in range(20)}


def test_ctrl_c_while_the_caller_serves_the_link_leaves_the_pool_working(one_node) -> None:
    # Results stream in while the main thread receives and dispatches them: an
    # interrupt must wait until what was received is delivered, or it is lost.
    with dmp.Pool(2, address=one_node.address) as pool:
        assert turns.interrupt_maps_then_use(pool, square, rounds=10, seed=11, delay=(0.01, 0.08), check=500) > 0


def test_a_receive_after_the_fd_signalled_finds_a_message_or_nothing(one_node) -> None:
    # When the poll saw the socket's fd, the link receives once without asking readable()
    # first. ZeroMQ's fd also signals for things that are no message: that recv then
    # finds nothing (Again), which must leave the link as it was.
    with dmp.Pool(1, address=one_node.address) as pool:
        link = pool._link
        assert pool.apply(square, (3,)) == 9
        with link._io:
            assert link._receive(True) is False  # nothing there: no exception, nothing in the inbox
            assert not link._inbox
            assert not link._chan.used  # seen empty: its fd signals the next arrival
        results = [pool.apply_async(square, (i,)) for i in range(20)]
        assert [r.get(timeout=30) for r in results] == [i * i for i in range(20)]
        assert pool.apply(square, (4,)) == 16


def test_the_look_after_an_apply_s_result_waits_and_nothing_is_left_behind(one_node, monkeypatch) -> None:
    # With nothing else outstanding, the result is delivered and the pump ends without
    # looking for more (no readable()): the socket stays marked used, so the next post()
    # or poll looks first. Counted per pump, whichever thread runs it.
    pumps: list[tuple[int, int]] = []  # (readable() calls, outcomes due at its end) per signalled pump
    looks = threading.local()
    real_pump, real_readable = link_mod.RemoteLink._pump, transport.Channel.readable

    def pump(self, ready=link_mod.LOOK):  # type: ignore[no-untyped-def]
        looks.n = 0
        try:
            return real_pump(self, ready)
        finally:
            if ready & link_mod.SIGNALLED:
                pumps.append((looks.n, self.session.credit.outstanding))
            looks.n = None

    def readable(self):  # type: ignore[no-untyped-def]
        if getattr(looks, "n", None) is not None:
            looks.n += 1
        return real_readable(self)

    monkeypatch.setattr(link_mod.RemoteLink, "_pump", pump)
    monkeypatch.setattr(transport.Channel, "readable", readable)
    with dmp.Pool(2, address=one_node.address) as pool:
        for i in range(50):
            assert pool.apply(square, (i,)) == i * i
        idle = [n for n, due in pumps if due == 0]
        assert idle and not any(idle), pumps  # such pumps happened, and none looked
        # Results due together still all arrive: the first one's look is made at once.
        got: list[int] = []
        done = threading.Event()

        def collect(value: int) -> None:
            got.append(value)
            if len(got) == 40:
                done.set()

        first = pool.apply_async(square, (0,))
        for i in range(1, 41):
            pool.apply_async(square, (i,), callback=collect)
        assert first.get(timeout=30) == 0
        assert done.wait(30) and sorted(got) == [i * i for i in range(1, 41)]
        # A result with nobody waiting, after a deferred look: the link's thread delivers it.
        assert pool.apply(square, (5,)) == 25
        late = threading.Event()
        pool.apply_async(square, (6,), callback=lambda v: late.set())
        assert late.wait(30)


# --- the caller's look before it sleeps (DMP_SPIN_US; RemoteLink._lead_poll) ----------------


@pytest.mark.parametrize("spin", ["", "0", "300", "1000000"])
def test_applies_return_their_results_whatever_the_spin(one_node: Cluster, monkeypatch: pytest.MonkeyPatch, spin: str) -> None:
    monkeypatch.setenv(_config.ENV_SPIN, spin)
    with dmp.Pool(2, address=one_node.address) as pool:
        assert [pool.apply(square, (i,)) for i in range(50)] == [i * i for i in range(50)]
        assert pool.apply_async(nap, (0.2,)).get(30) == 0.2
        assert pool.map(square, range(100), chunksize=1) == [i * i for i in range(100)]


def test_a_long_wait_sleeps_after_its_look(one_node: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's CPU while it waits 1.5 s on one result: one look of at most
    DMP_SPIN_US (here 0.1 s), not a look per poll slice nor a busy wait."""
    monkeypatch.setenv(_config.ENV_SPIN, "100000")
    with dmp.Pool(1, address=one_node.address) as pool:
        assert pool.apply(square, (3,)) == 9  # connected, the worker warm
        pending = pool.apply_async(nap, (1.5,))
        cpu0 = time.thread_time()
        assert pending.get(30) == 1.5
        spent = time.thread_time() - cpu0
    assert spent < 0.6, f"the waiting caller used {spent:.3f} s of CPU in a 1.5 s wait"


@pytest.mark.parametrize("bad", ["fast", "-1", "2e6", "nan"])
def test_a_bad_spin_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv(_config.ENV_SPIN, bad)
    with pytest.raises(ValueError, match="DMP_SPIN_US"):
        _config.spin_seconds()


def test_spin_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_config.ENV_SPIN, raising=False)
    expected = _config.SPIN_US / 1e6 if len(os.sched_getaffinity(0)) > 1 else 0.0
    assert _config.spin_seconds() == expected
    monkeypatch.setenv(_config.ENV_SPIN, "0")
    assert _config.spin_seconds() == 0.0
    monkeypatch.setenv(_config.ENV_SPIN, " 250 ")
    assert _config.spin_seconds() == pytest.approx(250e-6)
