"""Fixtures for the integration tests: one real loopback LocalCluster per module, stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import dmp
from tests.byvalue import pickled_by_value

from . import _tasks


@pytest.fixture(scope="module", autouse=True)
def _functions_by_value() -> Iterator[None]:
    """The task functions travel by value (nodes cannot import tests/), only while this directory's tests run."""
    with pickled_by_value(_tasks):
        yield


@pytest.fixture(scope="module")
def cluster() -> Iterator[dmp.LocalCluster]:
    with dmp.LocalCluster(nodes=2, processes=1) as c:
        yield c


@pytest.fixture(autouse=True)
def _no_default_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Local mode means local: no DMP_ADDRESS from the environment."""
    monkeypatch.delenv("DMP_ADDRESS", raising=False)
    monkeypatch.delenv("DMP_AUTHKEY", raising=False)
