"""The Ctrl-C guard in a forked child: a fresh state there, as in a new process.

dmp keeps no at-fork handler for it (a forked worker pays for each Python
function it runs): the child's first step notices the fork (``_pid.here``)
and starts afresh. A child forked inside a step, or by another thread than
the main one, must still hold a SIGINT for the end of its own steps.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from dmp.client import sigint

pytestmark = pytest.mark.timeout(30)


def _child_steps() -> int:
    """In the child: its exit status, 0 if the guard works as in a new process."""
    try:
        with sigint.critical:
            if sigint._depth != 1 or sigint._pending:
                return 2  # the parent's depth (or its held SIGINT) came along
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # a handler runs at the next bytecode boundary
                pass
            if not sigint._pending:
                return 3  # raised or lost inside the step instead of held
    except KeyboardInterrupt:
        return 0  # held until the step ended, then raised
    return 4


def _fork_and_wait() -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = _child_steps()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_child_forked_inside_a_step_starts_with_no_step() -> None:
    with sigint.critical:
        code = _fork_and_wait()
    assert code == 0


def test_a_child_forked_by_another_thread_guards_its_own_main_thread() -> None:
    got: list[int] = []

    def fork_here() -> None:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child: its forking thread is its main thread
            code = 1
            try:
                code = _child_steps()
            finally:
                os._exit(code)
        got.append(pid)

    with sigint.critical:  # the main thread is inside a step as the other thread forks
        thread = threading.Thread(target=fork_here)
        thread.start()
        thread.join()
    assert got
    _, status = os.waitpid(got[0], 0)
    assert os.waitstatus_to_exitcode(status) == 0
