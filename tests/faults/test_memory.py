"""A task that uses too much memory, local and cluster: the worker memory limit, and the kernel's OOM killer.

* ``--worker-memory-limit`` / ``Pool(worker_memory_limit=)``: the supervisor samples
  each busy worker's RSS on its 0.1 s timer and kills one past the limit; the
  task's error says so, and it is retried like any lost task.
* A real OOM kill: the node (or, for local mode, a script's process) runs in a
  memory cgroup of its own with a small limit, made here as root (skipped with
  the reason when no memory cgroup can be made); the task's error then names the
  kernel's OOM killer, read from the cgroup's ``oom_kill`` count.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import dmp
from dmp.deaths import format_size
from dmp.node import oomwatch
from dmp.node.supervisor import resident_bytes
from tests.daemons import Daemons, base_env, wait_for

from . import tasks

MIB = 1 << 20


@pytest.fixture(scope="module")
def limited_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemons]:
    """A manager and one node of two workers with --worker-memory-limit 200MiB."""
    c = Daemons(tmp_path_factory.mktemp("daemons"))
    try:
        c.start_manager()
        c.start_node("mem1", 2, "--worker-memory-limit", "200MiB")
        c.wait_slots(2)
        yield c
    finally:
        c.stop()


def _check_over_limit(err: dmp.WorkerLostError, node: str, limit: int, markers: Path, attempts: int) -> None:
    runs = tasks.attempts(str(markers), 0)
    assert len(runs) == attempts and len({pid for pid, _ in runs}) == attempts, runs  # retried as any loss
    text = str(err)
    assert text.startswith("task exceeded the worker memory limit (RSS "), text
    assert f" > limit {format_size(limit)}) on node {node!r} pid {runs[-1][0]}" in text, text
    assert f"gave up after {attempts} attempts" in text, text
    cause = err.cause
    assert cause is not None and cause.kind == "memory_limit" and cause.task_fault, cause
    assert cause.limit == limit and cause.rss > limit and cause.exitcode == -9, cause
    assert (err.node, err.pid, err.exitcode) == (node, runs[-1][0], -9)


@pytest.mark.timeout(120)
def test_local_task_over_the_memory_limit_is_killed_and_says_so(markers: Path) -> None:
    # A forked worker's RSS starts at about this process's: the limit sits above it.
    limit = resident_bytes(os.getpid()) + 150 * MIB
    with dmp.Pool(2, worker_memory_limit=limit, max_retries=1) as pool:
        with pytest.raises(dmp.WorkerLostError) as info:
            pool.apply(tasks.hog, (400, str(markers)))
        _check_over_limit(info.value, "local", limit, markers, attempts=2)
        # Tasks within the limit run on: idle workers are not charged.
        assert pool.map(tasks.square, range(20)) == [x * x for x in range(20)]


@pytest.mark.timeout(120)
def test_cluster_task_over_the_memory_limit_is_killed_and_says_so(limited_cluster: Daemons, markers: Path) -> None:
    with dmp.Pool(address=limited_cluster.address, max_retries=1) as pool:
        with pytest.raises(dmp.WorkerLostError) as info:
            pool.apply(tasks.hog, (400, str(markers)))
        _check_over_limit(info.value, "mem1", 200 * MIB, markers, attempts=2)
        assert pool.map(tasks.square, range(20)) == [x * x for x in range(20)]
    log = (limited_cluster.logdir / "mem1.log").read_text()
    assert "over the worker memory limit of 200 MiB: killed" in log, log
    status = limited_cluster.status()
    assert status is not None
    assert "on node 'mem1' exceeded the worker memory limit (RSS" in status["totals"]["last_worker_lost"], status


@pytest.mark.timeout(120)
def test_local_cluster_forwards_the_memory_limit(markers: Path) -> None:
    with dmp.LocalCluster(1, 1, worker_memory_limit="150MiB") as cluster, \
            dmp.Pool(address=cluster.address, authkey=cluster.authkey, max_retries=0) as pool:
        with pytest.raises(dmp.WorkerLostError) as info:
            pool.apply(tasks.hog, (400, str(markers)))
        _check_over_limit(info.value, "local-1", 150 * MIB, markers, attempts=1)


def test_bad_memory_limits_are_refused_naming_the_value() -> None:
    for bad in ("lots", "0", -5, "12XB"):
        with pytest.raises(ValueError, match="worker_memory_limit") as info:
            dmp.Pool(1, worker_memory_limit=bad)  # type: ignore[arg-type]
        assert repr(bad) in str(info.value)
        with pytest.raises(ValueError, match="worker_memory_limit"):
            dmp.LocalCluster(1, 1, worker_memory_limit=bad)
        with pytest.raises(ValueError, match="worker_memory_limit"):
            dmp.Executor(1, worker_memory_limit=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dmp worker --worker-memory-limit"):
        dmp.Pool(address="tcp://127.0.0.1:9", worker_memory_limit="1GiB")  # a cluster's nodes set it
    for bad in ("12XB", "0", "-1GiB"):
        proc = subprocess.run(
            [sys.executable, "-m", "dmp", "worker", "tcp://127.0.0.1:9", f"--worker-memory-limit={bad}"],
            env=base_env(), capture_output=True, text=True, timeout=30,
        )
        assert proc.returncode == 2, proc
        assert "--worker-memory-limit" in proc.stderr and repr(bad) in proc.stderr, proc.stderr


# --- the kernel's OOM killer, in a memory cgroup made for the test ----------------------------


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[tuple[str, tuple[str, ...]]]:
    """A new child of our memory cgroup limited to ``limit`` bytes: yields (its count file,
    a command prefix that joins it and execs the rest); removed afterwards, by its path."""
    found = [p for p in oomwatch.candidates(_read("/proc/self/cgroup"), _read("/proc/self/mountinfo"))
             if oomwatch.read_count(p) is not None]
    if not found:
        pytest.skip("no memory cgroup with an oom_kill count here")
    parent, count_file = os.path.dirname(found[0]), os.path.basename(found[0])
    path = os.path.join(parent, f"dmp-oomtest-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.mkdir(path)
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup under {parent}: {exc}")
    try:
        try:
            if count_file == "memory.oom_control":  # cgroup v1
                _write(os.path.join(path, "memory.limit_in_bytes"), str(limit))
                with contextlib.suppress(OSError):  # no swap accounting: nothing to cap
                    _write(os.path.join(path, "memory.memsw.limit_in_bytes"), str(limit))
            else:
                _write(os.path.join(path, "memory.max"), str(limit))
                with contextlib.suppress(OSError):
                    _write(os.path.join(path, "memory.swap.max"), "0")
        except OSError as exc:
            pytest.skip(f"cannot limit the memory cgroup {path}: {exc}")
        procs = os.path.join(path, "cgroup.procs")
        probe = subprocess.run(["sh", "-c", f"echo $$ > {procs}"], capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            pytest.skip(f"cannot move a process into the memory cgroup {path}: {probe.stderr.strip()}")
        yield os.path.join(path, count_file), ("sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh")
    finally:
        def removed() -> bool:
            try:
                os.rmdir(path)
            except FileNotFoundError:
                return True
            except OSError:
                return False  # processes still leaving it
            return True

        wait_for(removed, 30, f"the cgroup {path} to be removable")


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


OOM_TEXT = "was killed by the kernel's OOM killer (out of memory)"


@pytest.mark.timeout(120)
def test_cluster_oom_kill_is_named(tmp_path: Path, markers: Path) -> None:
    with memory_cgroup(256 * MIB) as (count_file, wrap):
        c = Daemons(tmp_path / "daemons")
        try:
            c.start_manager()
            c.start_node("oom1", 1, wrap=wrap)
            c.wait_slots(1)
            with dmp.Pool(address=c.address, max_retries=0) as pool:
                with pytest.raises(dmp.WorkerLostError) as info:
                    pool.apply(tasks.hog, (1024, str(markers)))
        finally:
            c.stop()
        assert (oomwatch.read_count(count_file) or 0) >= 1  # the kernel says it killed
    err = info.value
    ((pid, node),) = tasks.attempts(str(markers), 0)
    assert node == "oom1"
    assert f"worker process pid {pid} on node 'oom1' {OOM_TEXT} while running this task" in str(err), str(err)
    assert err.cause is not None and err.cause.kind == "oom" and (err.node, err.pid) == ("oom1", pid)


LOCAL_SCRIPT = textwrap.dedent("""
    import json, sys
    import dmp
    from tests.faults import tasks

    with dmp.Pool(1, max_retries=0) as pool:
        try:
            pool.apply(tasks.hog, (1024, sys.argv[1]))
        except dmp.WorkerLostError as err:
            print(json.dumps([str(err), err.cause.kind, err.pid]))
""")


@pytest.mark.timeout(120)
def test_local_oom_kill_is_named(markers: Path) -> None:
    with memory_cgroup(256 * MIB) as (_count_file, wrap):
        # The pool's own process runs in the cgroup: a script, not this test process.
        proc = subprocess.run(
            [*wrap, sys.executable, "-c", LOCAL_SCRIPT, str(markers)], env=base_env(), cwd=Path(__file__).parents[2],
            capture_output=True, text=True, timeout=100,
        )
    assert proc.returncode == 0 and proc.stdout.strip(), proc
    text, kind, pid = json.loads(proc.stdout)
    assert kind == "oom" and f"worker process pid {pid} on node 'local' {OOM_TEXT}" in text, text
