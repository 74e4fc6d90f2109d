"""Fixtures for the fault-injection suite: daemons owned by PID, killed after each test.

``soak.py`` is a script (run it by hand), not a test module.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

from . import tasks
from .harness import FaultCluster

collect_ignore = ["soak.py"]

# The nodes cannot import tests/: task functions travel by value.
cloudpickle.register_pickle_by_value(tasks)


def start_cluster(
    tmp: Path, *, nodes: int = 2, processes: int = 2, authkey: bytes | None = None, manager_args: tuple[str, ...] = ()
) -> FaultCluster:
    """Start a manager and ``nodes`` nodes; on failure print their logs and kill them."""
    cluster = FaultCluster(tmp, authkey=authkey, manager_args=manager_args)
    try:
        return cluster.start(nodes, processes)
    except BaseException:
        sys.stderr.write(cluster.logs())
        cluster.stop()
        raise


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FaultCluster]:
    """A fresh manager and two nodes of two workers each, for a test that hurts them."""
    c = start_cluster(tmp_path / "daemons")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    """One manager and two nodes for a module whose tests only hurt worker processes."""
    c = start_cluster(tmp_path_factory.mktemp("daemons"))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    d = tmp_path / "markers"
    d.mkdir()
    return d
