"""Fixtures that start real daemons (manager, worker nodes) on loopback through tests/daemons.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import Daemons, start_cluster, unused_address

Cluster = Daemons
__all__ = ["Cluster", "start_cluster", "unused_address"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Daemons]:
    c = start_cluster(tmp_path / "daemons")
    try:
        yield c
    finally:
        c.stop()
