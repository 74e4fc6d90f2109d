"""A client flooding the manager: refused past its queue bound, memory bounded, others served."""

from __future__ import annotations

from pathlib import Path

import pytest

import dmp
from dmp import serialization
from dmp.client.engine import ClusterEngine
from dmp.errors import ProcessError
from dmp.wire.protocol import Status

from .harness import FaultCluster, peak_rss_kib, wait_for

pytestmark = pytest.mark.timeout(120)

MAX_QUEUED = 20_000


class _Sink:
    """Records what the manager says about the flooding job."""

    def __init__(self) -> None:
        self.failure: BaseException | None = None
        self.results = 0

    def on_result(self, task_id: int, status: Status, frames: list, info: object) -> bool:
        self.results += 1
        return False

    def on_failure(self, exc: BaseException) -> None:
        self.failure = exc


def test_a_flooding_client_is_refused_and_the_manager_stays_bounded(tmp_path: Path) -> None:
    cluster = FaultCluster(tmp_path / "logs", manager_args=("--max-queued", str(MAX_QUEUED)))
    try:
        cluster.start_manager()
        wait_for(lambda: cluster.status() is not None, 30, "the manager to answer")
        before = peak_rss_kib(cluster.manager.pid)  # type: ignore[union-attr]
        # No worker has joined, so nothing drains: the flooder's tasks pile up
        # in the manager until its bound, then every further Submit is refused.
        flood = ClusterEngine(address=cluster.address, authkey=None)
        sink = _Sink()
        job = flood.session.new_job(sink, [], 0)
        payload = serialization.dumps((abs, (-1,), {}))
        batch = [(i, payload) for i in range(1000)]
        for _ in range(200):  # 200,000 tasks offered, 10x the bound
            flood.session.submit(job, batch)
        wait_for(lambda: sink.failure is not None, 30, "the manager to refuse the flood")
        assert isinstance(sink.failure, ProcessError) and "limit" in str(sink.failure)
        status = cluster.status()
        assert status is not None
        flooder = next(c for c in status["clients"] if c["queued"])
        assert flooder["queued"] <= MAX_QUEUED, status
        grown_mib = (peak_rss_kib(cluster.manager.pid) - before) / 1024  # type: ignore[union-attr]
        assert grown_mib < 100, f"the manager grew by {grown_mib:.0f} MiB holding {MAX_QUEUED} tiny tasks"
        # Everyone else is still served, the flooder's backlog notwithstanding.
        cluster.start_node("node1")
        cluster.wait_slots(2)
        with dmp.Pool(address=cluster.address) as pool:
            assert pool.map(abs, range(-50, 0)) == list(range(50, 0, -1))
        flood.stop(kill=True)
        # The flooder's backlog went with it.
        wait_for(lambda: (s := cluster.status()) is not None and s["queued"] == 0, 30, "the backlog to be dropped")
    finally:
        cluster.stop()
