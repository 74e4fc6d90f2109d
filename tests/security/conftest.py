"""Fixtures for the attacker suite: keyed loopback daemons owned by PID, killed after use."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.byvalue import pickled_by_value
from tests.faults import tasks
from tests.faults.harness import FaultCluster


@pytest.fixture(scope="module", autouse=True)
def _functions_by_value() -> Iterator[None]:
    """The task functions travel by value (nodes cannot import tests/), only while this directory's tests run."""
    with pickled_by_value(tasks):
        yield


KEY = b"the key of the security suite"


def start(tmp: Path, *, nodes: int = 1, processes: int = 2, authkey: bytes | None = KEY,
          manager_args: tuple[str, ...] = ()) -> FaultCluster:
    """A keyed manager and ``nodes`` nodes; on failure print their logs and kill them."""
    c = FaultCluster(tmp, authkey=authkey, manager_args=manager_args)
    try:
        return c.start(nodes, processes)
    except BaseException:
        sys.stderr.write(c.logs())
        c.stop()
        raise


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FaultCluster]:
    """A keyed manager and one node of two workers, for one test."""
    c = start(tmp_path / "daemons")
    try:
        yield c
    finally:
        c.stop()
