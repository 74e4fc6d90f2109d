"""Fixtures for the integration tests: one real loopback LocalCluster per module, stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator

import cloudpickle
import pytest

import dmp

from . import _tasks

# The nodes cannot import tests/: the estimators and task functions travel by value.
cloudpickle.register_pickle_by_value(_tasks)


@pytest.fixture(scope="module")
def cluster() -> Iterator[dmp.LocalCluster]:
    with dmp.LocalCluster(nodes=2, processes=1) as c:
        yield c


@pytest.fixture(autouse=True)
def _no_default_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Local mode means local: no DMP_ADDRESS from the environment."""
    monkeypatch.delenv("DMP_ADDRESS", raising=False)
    monkeypatch.delenv("DMP_AUTHKEY", raising=False)
