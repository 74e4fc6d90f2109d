"""dmp.node.forkproc.start_all: a local pool's first workers forked back to back, each holding
only its own pipe ends; a fork that fails keeps the workers forked before it and leaks nothing."""

from __future__ import annotations

import gc
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

import dmp
from dmp.node import forkproc

pytestmark = pytest.mark.timeout(120)


def square(x: int) -> int:
    return x * x


def _pipe_inodes() -> set[int]:
    """Inodes of the pipes this process holds open."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listing's own fd, closed by now
        if link.startswith("pipe:["):
            found.add(int(link[6:-1]))
    return found


def report_pipes(folder: str) -> None:
    """A worker's initializer: the pipes it holds, in a file named by its pid."""
    inodes = _pipe_inodes()
    path = Path(folder, str(os.getpid()))
    path.with_suffix(".tmp").write_text(" ".join(map(str, sorted(inodes))))
    path.with_suffix(".tmp").rename(path)


def _ends(proc: Any) -> set[int]:
    """The two pipes between the pool's process and worker ``proc`` (its sentinel and its
    parent-death pipe), by inode: the worker holds the other end of each."""
    return {os.fstat(proc.sentinel).st_ino, os.fstat(proc._popen._parent_w).st_ino}


def test_workers_forked_together_hold_only_their_own_pipe_ends(tmp_path: Path) -> None:
    # A worker holding a sibling's end open would hide that sibling's death
    # (its sentinel) or the pool's (the sibling's parent-death pipe).
    with dmp.Pool(3, initializer=report_pipes, initargs=(str(tmp_path),)) as pool:
        assert pool.apply(square, (3,)) == 9
        procs = pool._engine.processes
        ends = {proc.pid: _ends(proc) for proc in procs}
        everyone = set().union(*ends.values())
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("[0-9]*"))) < len(procs):
            assert time.monotonic() < deadline, "the workers never ran their initializer"
            time.sleep(0.01)
    for pid, own in ends.items():
        held = {int(i) for i in (tmp_path / str(pid)).read_text().split()}
        assert held & everyone == own, (pid, held & everyone, own)


def _fork_failing_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """``os.fork`` raises on its ``call``-th call (counting from 1), as when the system runs out of processes."""
    real = os.fork
    calls = [0]

    def fork() -> int:
        calls[0] += 1
        if calls[0] == call:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real()

    monkeypatch.setattr(os, "fork", fork)


def _fds() -> set[tuple[str, str]]:
    """This process's open descriptors, with what each is."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            found.add((name, os.readlink(f"/proc/self/fd/{name}")))
        except OSError:
            pass  # the listing's own fd, closed by now
    return found


def test_a_failed_fork_keeps_the_processes_forked_before_it(monkeypatch: pytest.MonkeyPatch) -> None:
    procs = [forkproc.ForkProcess(target=square, args=(i,), daemon=True) for i in range(3)]
    before = _fds()
    _fork_failing_at(monkeypatch, 2)
    with pytest.raises(BlockingIOError):
        forkproc.start_all(procs)
    monkeypatch.undo()
    first, *rest = procs
    assert first.pid and all(p.pid is None for p in rest)
    # The first one's sentinel and parent-death pipe end; the others' pipes are closed.
    assert len(_fds() - before) == 2
    first.join(30)
    assert first.exitcode == 0
    first.close()
    assert _fds() - before == set()
    assert first not in multiprocessing.active_children()


def test_a_pool_whose_second_fork_fails_raises_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    with dmp.Pool(2) as pool:  # the process's own one-time set-up (ZeroMQ's context, imports)
        assert pool.apply(square, (2,)) == 4
    pool.join()
    before, children = _fds(), set(multiprocessing.active_children())
    _fork_failing_at(monkeypatch, 2)
    with pytest.raises(BlockingIOError):
        dmp.Pool(2)
    monkeypatch.undo()
    assert set(multiprocessing.active_children()) <= children  # the worker forked first was killed and reaped
    # ZeroMQ closes the pool's socket (its listener, its mailbox) on its own threads, soon.
    deadline = time.monotonic() + 30
    while _fds() - before:
        assert time.monotonic() < deadline, f"left open: {_fds() - before}"
        gc.collect()
        time.sleep(0.01)
    with dmp.Pool(2) as pool:  # and the next pool is whole
        assert pool.map(square, range(10)) == [x * x for x in range(10)]
    pool.join()
