"""Task functions for the task_timeout and resources tests (they travel by value)."""

from __future__ import annotations

import fcntl
import os
import signal
import time

from . import tasks


def stuck_or_quick(directory: str, i: int, how: str) -> tuple[int, str, int]:
    """Log the attempt, then hang in C (``sleep``: time.sleep; ``pause``:
    signal.pause) or return (i, node, pid) at once (``quick``)."""
    tasks.log_attempt(directory, i)
    if how == "sleep":
        time.sleep(3600)
    elif how == "pause":
        signal.pause()
    return i, os.environ.get("FAULT_NODE", "local"), os.getpid()


def hold_gpu(lock_path: str, i: int) -> tuple[int, str, bool]:
    """Hold an exclusive lock on ``lock_path`` for a moment; (i, node, whether
    another task held it at the same time). Two GPU tasks running at once on
    one node would find the lock taken."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return i, os.environ.get("FAULT_NODE", "local"), True
        time.sleep(0.05)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return i, os.environ.get("FAULT_NODE", "local"), False
    finally:
        os.close(fd)


def star_stuck(args: tuple[str, int, str]) -> tuple[int, str, int]:
    return stuck_or_quick(*args)
