"""dmp.node.cancelkill on real processes: a forked child plays the worker, writing its slot.

A worker whose slot shows a cancelled task is killed; one that shows another
task (or none) is stopped, looked at and resumed, and goes on running; one that
someone else stopped is judged without being resumed.
"""

from __future__ import annotations

import mmap
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmp.node import slot as slot_mod
from dmp.node.cancelkill import is_stopped, kill_if_running
from tests.daemons import wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[int, mmap.mmap, str]]:
    """A child that runs 'task' 7 and counts, forever, into a file: (pid, slot, count file)."""
    slot = slot_mod.new_slot()
    count = str(tmp_path / "count")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            slot_mod.SLOT.pack_into(slot, 0, 7, 0, 0.0)
            n = 0
            while True:
                n += 1
                if n % 10000 == 0:
                    with open(count, "w") as fh:
                        fh.write(str(n))
        finally:
            os._exit(1)
    try:
        yield pid, slot, count
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # the test reaped it
        slot.close()


def _count(path: str) -> int:
    try:
        with open(path) as fh:
            return int(fh.read() or 0)
    except (OSError, ValueError):
        return 0


def test_a_worker_running_another_task_is_spared_and_runs_on(worker: tuple[int, mmap.mmap, str]) -> None:
    pid, slot, count = worker
    wait_for(lambda: _count(count) > 0, 30, "the child to count")
    for _ in range(20):
        assert kill_if_running(pid, slot, [5, 7]) == 7  # it runs 7, given it after the cancelled one
    assert not is_stopped(pid)
    seen = _count(count)
    wait_for(lambda: _count(count) > seen, 30, "the spared child to go on counting")
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)


def test_a_worker_running_a_cancelled_task_is_killed(worker: tuple[int, mmap.mmap, str]) -> None:
    pid, slot, _count_file = worker
    wait_for(lambda: slot_mod.read_slot(slot) == 7, 30, "the child to write its slot")
    assert kill_if_running(pid, slot, [5, 6]) is None  # it runs 7, the cancelled task
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    # Gone now: nothing to signal, and nothing raised.
    assert kill_if_running(pid, slot, [7]) is None


def test_a_worker_between_tasks_is_killed(worker: tuple[int, mmap.mmap, str]) -> None:
    """Nothing in its slot: the cancelled task may be next in its own queue, so it dies
    (a cancelled Process that sleeps forever would otherwise hold it for good)."""
    pid, slot, _count_file = worker
    wait_for(lambda: slot_mod.read_slot(slot) == 7, 30, "the child to write its slot")
    slot_mod.SLOT.pack_into(slot, 0, -1, 0, 0.0)
    assert kill_if_running(pid, slot, [8, 9]) is None
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_a_worker_someone_else_stopped_is_judged_and_left_stopped(worker: tuple[int, mmap.mmap, str]) -> None:
    pid, slot, _count_file = worker
    wait_for(lambda: slot_mod.read_slot(slot) == 7, 30, "the child to write its slot")
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: is_stopped(pid), 30, "the child to stop")
    assert kill_if_running(pid, slot, [7]) == 7
    assert is_stopped(pid)
    os.kill(pid, signal.SIGCONT)
