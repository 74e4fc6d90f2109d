"""Fixtures for the fault-injection suite: daemons owned by PID (tests/daemons.py), killed after each test.

``soak.py`` is a script (run it by hand), not a test module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dmp
from tests.byvalue import pickled_by_value
from tests.daemons import Daemons, start_cluster

from . import limit_tasks, tasks

collect_ignore = ["soak.py"]


@pytest.fixture(scope="module", autouse=True)
def _functions_by_value() -> Iterator[None]:
    """The task functions travel by value (nodes cannot import tests/), only while this directory's tests run."""
    with pickled_by_value(tasks, limit_tasks):
        yield


__all__ = ["start_cluster"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Daemons]:
    """A fresh manager and two nodes of two workers each, for a test that hurts them."""
    c = start_cluster(tmp_path / "daemons")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemons]:
    """One manager and two nodes for a module whose tests only hurt worker processes."""
    c = start_cluster(tmp_path_factory.mktemp("daemons"))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def make_pool(request: pytest.FixtureRequest) -> Iterator[Any]:
    """make_pool(mode, **kw): a local Pool(2) or a Pool on the module's shared cluster."""
    pools: list[dmp.Pool] = []

    def make(mode: str, **kw: Any) -> dmp.Pool:
        if mode == "local":
            pool = dmp.Pool(2, **kw)
        else:
            cluster: Daemons = request.getfixturevalue("shared_cluster")
            cluster.wait_slots(4)  # the previous test's victims have been replaced
            pool = dmp.Pool(address=cluster.address, **kw)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.terminate()
