"""Fixtures for the fault-injection suite: daemons owned by PID (tests/daemons.py), killed after each test.

``soak.py`` is a script (run it by hand), not a test module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

from tests.daemons import Daemons, start_cluster

from . import tasks

collect_ignore = ["soak.py"]

# The nodes cannot import tests/: task functions travel by value.
cloudpickle.register_pickle_by_value(tasks)

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
def markers(tmp_path: Path) -> Path:
    d = tmp_path / "markers"
    d.mkdir()
    return d
