"""Process conformance: lifecycle, attributes, exit codes, introspection."""

from __future__ import annotations

import multiprocessing.connection
import os
import signal
import sys
import time
from typing import Any

import pytest

from . import _funcs as f

pytestmark = pytest.mark.timeout(30)


def _reap(*procs: Any) -> None:
    """Kills and joins whatever a test started, whatever happened."""
    for p in procs:
        try:
            if p.is_alive():
                p.kill()
            p.join(5)
        except ValueError:  # already closed
            pass


def test_start_join_exitcode_zero(mp: Any) -> None:
    p = mp.Process(target=f.noop)
    try:
        assert p.exitcode is None
        assert not p.is_alive()
        p.start()
        p.join(10)
        assert not p.is_alive()
        assert p.exitcode == 0
    finally:
        _reap(p)


def test_target_args_kwargs(mp: Any) -> None:
    q = mp.Queue()
    p = mp.Process(target=f.put_args, args=(q, 1, "two"), kwargs={"three": [3]})
    try:
        p.start()
        assert q.get(timeout=10) == ((1, "two"), {"three": [3]})
        p.join(10)
        assert p.exitcode == 0
    finally:
        _reap(p)


def test_subclass_run(mp: Any) -> None:
    class Sub(mp.Process):  # type: ignore[misc]
        def __init__(self, code: int) -> None:
            super().__init__()
            self.code = code

        def run(self) -> None:
            sys.exit(self.code)

    p = Sub(7)
    try:
        p.start()
        p.join(10)
        assert p.exitcode == 7
    finally:
        _reap(p)


def test_subclass_run_uses_queue(mp: Any) -> None:
    class Producer(mp.Process):  # type: ignore[misc]
        def __init__(self, q: Any) -> None:
            super().__init__()
            self.q = q

        def run(self) -> None:
            self.q.put(("from run", os.getpid()))

    q = mp.Queue()
    p = Producer(q)
    try:
        p.start()
        assert q.get(timeout=10) == ("from run", p.pid)
        p.join(10)
    finally:
        _reap(p)


def test_default_run_calls_target(mp: Any) -> None:
    # Process.run() called directly runs the target in this process.
    q = mp.Queue()
    p = mp.Process(target=f.put_pid, args=(q,))
    p.run()
    assert q.get(timeout=10) == os.getpid()


def test_join_timeout_then_terminate(mp: Any) -> None:
    p = mp.Process(target=f.sleep_forever)
    try:
        p.start()
        t0 = time.monotonic()
        assert p.join(timeout=0.2) is None
        assert 0.1 <= time.monotonic() - t0 < 5
        assert p.is_alive()
        assert p.exitcode is None
        p.terminate()
        p.join(10)
        assert not p.is_alive()
        assert p.exitcode == -signal.SIGTERM
    finally:
        _reap(p)


def test_kill(mp: Any) -> None:
    ready = mp.Event()
    p = mp.Process(target=f.ignore_sigterm_then_sleep, args=(ready,))
    try:
        p.start()
        assert ready.wait(10)
        p.terminate()  # ignored by the child
        p.join(0.3)
        assert p.is_alive()
        p.kill()
        p.join(10)
        assert p.exitcode == -signal.SIGKILL
    finally:
        _reap(p)


@pytest.mark.parametrize(
    ("target", "args", "code"),
    [
        (f.exit_with, (3,), 3),
        (f.exit_with, (0,), 0),
        (f.exit_with, ("a message",), 1),
        (f.raise_in_child, (), 1),
    ],
    ids=["sys.exit(3)", "sys.exit(0)", "sys.exit(str)", "exception"],
)
def test_exitcode(mp: Any, target: Any, args: tuple[Any, ...], code: int) -> None:
    p = mp.Process(target=target, args=args)
    try:
        p.start()
        p.join(10)
        assert p.exitcode == code
    finally:
        _reap(p)


def test_close(mp: Any) -> None:
    p = mp.Process(target=f.sleep_forever)
    try:
        p.start()
        with pytest.raises(ValueError):
            p.close()  # still running
        p.terminate()
        p.join(10)
        p.close()
        with pytest.raises(ValueError):
            p.is_alive()
        with pytest.raises(ValueError):
            p.exitcode  # noqa: B018
        p.close()  # idempotent
    finally:
        _reap(p)


def test_name(mp: Any) -> None:
    q = mp.Queue()
    p = mp.Process(
        target=f.put_identity, args=(q, mp.current_process, mp.parent_process), name="worker-x"
    )
    try:
        assert p.name == "worker-x"
        p.start()
        info = q.get(timeout=10)
        p.join(10)
        assert info["name"] == "worker-x"
    finally:
        _reap(p)


def test_default_name_and_setter(mp: Any) -> None:
    p = mp.Process(target=f.noop)
    assert isinstance(p.name, str) and p.name
    p.name = "renamed"
    assert p.name == "renamed"


def test_pid_and_ident(mp: Any) -> None:
    q = mp.Queue()
    p = mp.Process(target=f.put_identity, args=(q, mp.current_process, mp.parent_process))
    try:
        assert p.pid is None
        assert p.ident is None
        p.start()
        info = q.get(timeout=10)
        p.join(10)
        assert isinstance(p.pid, int)
        assert p.pid == info["pid"] == info["cp_pid"]
        assert p.ident == p.pid
        assert p.pid != os.getpid()
    finally:
        _reap(p)


@pytest.mark.local_only("the child runs on a node: its parent process is the node's, not the caller")
def test_parent_process_in_child(mp: Any) -> None:
    q = mp.Queue()
    p = mp.Process(target=f.put_identity, args=(q, mp.current_process, mp.parent_process))
    try:
        p.start()
        info = q.get(timeout=10)
        p.join(10)
        assert info["parent_pid"] == os.getpid()
    finally:
        _reap(p)


def test_current_process_in_parent(mp: Any) -> None:
    me = mp.current_process()
    assert me.name == "MainProcess"
    assert me.pid == os.getpid()
    assert mp.parent_process() is None


def test_daemon(mp: Any) -> None:
    assert mp.Process(target=f.noop).daemon is False
    p = mp.Process(target=f.sleep_forever, daemon=True)
    q = mp.Process(target=f.noop)
    q.daemon = True
    try:
        assert p.daemon is True
        assert q.daemon is True
        p.start()
        assert p.daemon is True
        p.terminate()
        p.join(10)
        assert p.exitcode == -signal.SIGTERM
    finally:
        _reap(p)


def test_sentinel(mp: Any) -> None:
    p = mp.Process(target=f.sleep_forever)
    try:
        with pytest.raises(ValueError):
            p.sentinel  # noqa: B018  (not started)
        p.start()
        s = p.sentinel
        assert multiprocessing.connection.wait([s], timeout=0.1) == []
        p.terminate()
        assert multiprocessing.connection.wait([s], timeout=10) == [s]
        p.join(10)
    finally:
        _reap(p)


def test_active_children(mp: Any) -> None:
    p = mp.Process(target=f.sleep_forever)
    try:
        p.start()
        assert p in mp.active_children()
        p.terminate()
        p.join(10)
        assert p not in mp.active_children()
    finally:
        _reap(p)


def test_many_processes(mp: Any) -> None:
    q = mp.Queue()
    procs = [mp.Process(target=f.put_pid, args=(q,)) for _ in range(5)]
    try:
        for p in procs:
            p.start()
        pids = sorted(q.get(timeout=10) for _ in procs)
        for p in procs:
            p.join(10)
        assert pids == sorted(p.pid for p in procs)
        assert all(p.exitcode == 0 for p in procs)
    finally:
        _reap(*procs)


def test_is_alive_lifecycle(mp: Any) -> None:
    p = mp.Process(target=f.sleep_then_return, args=(0.3,))
    try:
        assert not p.is_alive()
        p.start()
        assert p.is_alive()
        p.join(10)
        assert not p.is_alive()
    finally:
        _reap(p)


def test_child_output_reaches_parent(mp: Any, capfd: Any) -> None:
    p = mp.Process(target=f.print_lines, args=("hello from the child",))
    try:
        p.start()
        p.join(10)
        assert p.exitcode == 0
    finally:
        _reap(p)
    out, err = capfd.readouterr()
    assert "hello from the child" in out
    assert "hello from the child-err" in err


def test_cpu_count(mp: Any) -> None:
    assert mp.cpu_count() == os.cpu_count()


def test_lambda_target(mp: Any) -> None:
    # The fork start method never pickles the target, so stdlib runs a lambda
    # too; dmp promises the same in every mode (cloudpickle).
    q = mp.Queue()
    p = mp.Process(target=lambda q: q.put("lambda ran"), args=(q,))
    try:
        p.start()
        assert q.get(timeout=10) == "lambda ran"
        p.join(10)
        assert p.exitcode == 0
    finally:
        _reap(p)
