"""Worker process death, local and cluster: retried on another process, exact results, bounded.

Deaths: SIGKILL (the process kills itself), ``os._exit(3)``, a segfault via
ctypes, and an out-of-memory kill. The OOM kill is *simulated*: the task
grows its memory and a watchdog thread in the test (``harness.OomKiller``)
SIGKILLs it once its resident set passes 200 MiB, which is what the kernel's
(or a cgroup's) OOM killer does; a real one, and the worker memory limit, are
test_memory.py's. An allocation that merely *fails*
(``RLIMIT_AS``) is not a death: Python raises ``MemoryError`` in the task,
which reaches the caller like any exception of the task (tested below).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

import dmp

from . import tasks
from .harness import DeliveryCounter, OomKiller, alive

HOWS = ["sigkill", "exit", "segv", "oom"]
EXITCODE = {"sigkill": -signal.SIGKILL, "exit": 3, "segv": -signal.SIGSEGV, "oom": -signal.SIGKILL}
DESCRIBED = {
    "sigkill": "was killed by signal 9 (SIGKILL)", "exit": "exited with code 3",
    "segv": "was killed by signal 11 (SIGSEGV)", "oom": "was killed by signal 9 (SIGKILL)",
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("mode", ["local", "cluster"])
def test_worker_deaths_mid_map_lose_and_double_nothing(make_pool: Any, markers: Path, mode: str, how: str) -> None:
    n = 240
    victims = set(range(5, n, 48))  # five tasks die on their first attempt
    killer = OomKiller(markers) if how == "oom" else None
    try:
        pool = make_pool(mode)
        counter = DeliveryCounter(pool)
        result = pool.map_async(
            tasks.maybe_die, [(i, how, str(markers), i in victims) for i in range(n)], chunksize=1
        ).get(60)
    finally:
        if killer is not None:
            killer.stop()
    assert result == [i * i for i in range(n)]
    assert sorted(counter.counts.values()) == [1] * n, counter.doubled()  # each task delivered once
    for v in victims:
        runs = tasks.attempts(str(markers), v)
        assert len(runs) == 2, (v, runs)  # died once, rerun once
        assert runs[0][0] != runs[1][0]  # on another process
        assert not alive(runs[0][0])
    if killer is not None:
        assert len(killer.killed) == len(victims)
    assert pool.map(tasks.square, range(100)) == [x * x for x in range(100)]


CASES = [
    ("local", "sigkill", None),
    ("local", "segv", 1),
    ("local", "oom", 0),
    ("cluster", "sigkill", None),
    ("cluster", "exit", 0),
    ("cluster", "segv", 2),
    ("cluster", "oom", 1),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("mode", "how", "max_retries"), CASES)
def test_task_that_always_kills_its_worker_fails_alone_after_max_retries(
    make_pool: Any, markers: Path, mode: str, how: str, max_retries: int | None
) -> None:
    kw = {} if max_retries is None else {"max_retries": max_retries}
    retries = 3 if max_retries is None else max_retries
    killer = OomKiller(markers) if how == "oom" else None
    try:
        pool = make_pool(mode, **kw)
        (markers / "others").mkdir()  # before the map: its first task may run at once
        others = pool.map_async(tasks.sleep_logged, [(i, str(markers / "others"), 0.01) for i in range(1, 60)])
        doomed = pool.apply_async(tasks.always_die, (how, str(markers)))
        with pytest.raises(dmp.WorkerLostError) as info:
            doomed.get(60)
        good = others.get(60)
    finally:
        if killer is not None:
            killer.stop()
    runs = tasks.attempts(str(markers), 0)
    assert len(runs) == retries + 1, runs  # the first run and exactly max_retries reruns
    assert len({pid for pid, _ in runs}) == len(runs)  # each in a fresh process
    err = info.value
    last_pid, last_node = runs[-1]
    assert (err.pid, err.node, err.exitcode) == (last_pid, last_node, EXITCODE[how])
    # The node's account of the death: never the OOM killer's here (the "oom" case is
    # the test's own SIGKILL, and the cgroup's oom_kill count does not rise).
    assert err.cause is not None and err.cause.exitcode == EXITCODE[how]
    assert err.cause.kind == ("exit" if how == "exit" else "signal"), err.cause
    text = str(err)
    assert f"pid {last_pid}" in text and repr(last_node) in text and DESCRIBED[how] in text, text
    assert f"after {retries + 1} attempts" in text, text
    # Failure is per task: the map running beside it is whole, and the pool serves on.
    assert [r[0] for r in good] == [i * i for i in range(1, 60)]
    assert pool.map(tasks.square, range(50)) == [x * x for x in range(50)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["local", "cluster"])
def test_failed_allocation_is_the_tasks_memory_error_not_a_death(make_pool: Any, mode: str) -> None:
    pool = make_pool(mode)
    with pytest.raises(MemoryError):
        pool.apply(tasks.memory_error_under_rlimit, (256,))
    assert pool.map(tasks.square, range(20)) == [x * x for x in range(20)]


@pytest.mark.timeout(60)
def test_default_max_retries_is_three_and_zero_means_no_rerun(markers: Path) -> None:
    from dmp import _config

    assert _config.MAX_RETRIES == 3
    with pytest.raises(ValueError):
        dmp.Pool(1, max_retries=-1)
    with dmp.Pool(1, max_retries=0) as pool, pytest.raises(dmp.WorkerLostError) as info:
        pool.apply(tasks.always_die, ("exit", str(markers)))
    assert len(tasks.attempts(str(markers), 0)) == 1
    assert info.value.pid != os.getpid()
