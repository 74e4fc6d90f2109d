"""A caller waiting on its one outstanding cluster result looks for it without
sleeping for a moment first (DMP_SPIN_US; dmp.client.link.RemoteLink._lead_poll),
and only for a moment: a long task's wait sleeps."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import pytest

import dmp
from dmp import _config
from tests.byvalue import pickled_by_value

from .conftest import Cluster, start_cluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def _functions_by_value() -> Iterator[None]:
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
