"""Node resources end to end: ``dmp worker --resources`` on two real nodes, one
with GPU=1 and one without; ``Pool(resources={"GPU": 1})`` runs only on the
first, one task at a time there, while plain tasks use both; a request no
node has fails at once with ValueError; bad ``--resources`` exit 2.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import dmp

from . import limit_tasks, tasks
from .conftest import start_cluster
from .harness import FaultCluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    """node1 (2 workers) declares GPU=1 and MEM=8e9; node2 (2 workers) declares nothing."""
    c = start_cluster(tmp_path_factory.mktemp("daemons"), nodes=0)
    try:
        c.start_node("node1", 2, "--resources", "GPU=1,MEM=8e9")
        c.start_node("node2", 2)
        c.wait_slots(4)
        yield c
    finally:
        c.stop()


def test_status_shows_what_each_node_declared(gpu_cluster: FaultCluster) -> None:
    nodes = {n["name"]: n for n in gpu_cluster.wait_slots(4)["nodes"]}
    assert nodes["node1"]["resources"] == {"GPU": 1.0, "MEM": 8e9}
    assert "resources" not in nodes["node2"]


def test_gpu_tasks_run_only_on_the_gpu_node_one_at_a_time(gpu_cluster: FaultCluster, tmp_path: Path) -> None:
    lock = str(tmp_path / "gpu.lock")
    with dmp.Pool(address=gpu_cluster.address, resources={"GPU": 1}) as pool:
        got = pool.starmap(limit_tasks.hold_gpu, [(lock, i) for i in range(12)], chunksize=1)
        assert sorted(i for i, _node, _clash in got) == list(range(12))
        assert {node for _i, node, _clash in got} == {"node1"}
        assert not any(clash for _i, _node, clash in got), "two GPU tasks ran at once on node1"
        assert pool.apply(tasks.square, (3,)) == 9
    # Plain tasks still go everywhere.
    with dmp.Pool(address=gpu_cluster.address) as pool:
        nodes = {node for _sq, node, _pid in pool.map(tasks.where_slow, range(40), chunksize=1)}
        assert nodes == {"node1", "node2"}


def test_executor_and_process_take_resources(gpu_cluster: FaultCluster, tmp_path: Path) -> None:
    lock = str(tmp_path / "gpu.lock")
    with dmp.Executor(2, address=gpu_cluster.address, resources={"MEM": 4e9}) as ex:
        assert [ex.submit(limit_tasks.hold_gpu, lock, i).result(60)[1] for i in range(3)] == ["node1"] * 3
    proc = dmp.Process(target=tasks.square, args=(2,), address=gpu_cluster.address, resources={"GPU": 1})
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0 and proc._popen.node == "node1"  # type: ignore[attr-defined]


def test_a_request_no_node_can_meet_fails_at_once(gpu_cluster: FaultCluster) -> None:
    with dmp.Pool(address=gpu_cluster.address, resources={"GPU": 2}) as pool:
        with pytest.raises(ValueError, match=r"no joined node has resources GPU=2.*node1: GPU=1"):
            pool.map(tasks.square, range(10), chunksize=1)
    with dmp.Pool(address=gpu_cluster.address, resources={"TPU": 1}) as pool:
        with pytest.raises(ValueError, match="TPU"):
            pool.apply(tasks.square, (1,))
    proc = dmp.Process(target=tasks.square, args=(2,), address=gpu_cluster.address, resources={"GPU": 5})
    with pytest.raises(ValueError, match="GPU=5"):
        proc.start()


@pytest.mark.parametrize("bad", [{"GPU": 0}, {"GPU": -1}, {"GPU": float("inf")}, {"1GPU": 1}, {"GPU": "1"},
                                 {"G-PU": 1}, ["GPU"]])
def test_bad_resources_are_refused_clearly(bad: object) -> None:
    with pytest.raises(ValueError, match=r"resource|amount"):
        dmp.Pool(1, address="tcp://127.0.0.1:1", resources=bad)  # type: ignore[arg-type]


def test_resources_need_a_cluster() -> None:
    with pytest.raises(ValueError, match="needs a cluster"):
        dmp.Pool(1, resources={"GPU": 1})


@pytest.mark.parametrize("spec, says", [
    ("GPU=0", "positive"), ("GPU=-2", "positive"), ("GPU=inf", "finite"), ("GPU=nan", "finite"),
    ("1GPU=1", "name"), ("GPU", "NAME=AMOUNT"), ("GPU=two", "number"), ("GPU=1,GPU=2", "twice"),
    ("GPU=1,", "empty"), ("", "empty"),
])
def test_bad_resources_flag_exits_2(spec: str, says: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "dmp", "worker", "tcp://127.0.0.1:1", "--resources", spec],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "--resources" in proc.stderr and says in proc.stderr, proc.stderr
