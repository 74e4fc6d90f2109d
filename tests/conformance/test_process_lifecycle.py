"""A Process's start and its parent's exit: start() never waits for a free
worker, and a non-daemonic child the script did not join is waited for when
the script exits (multiprocessing's exit handler joins it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from . import _funcs as f

pytestmark = pytest.mark.timeout(60)

#: More processes than the loopback cluster's worker slots (two nodes of two).
MORE_THAN_THE_SLOTS = 6


def test_start_does_not_wait_for_a_free_slot(
    mp: Any, monkeypatch: pytest.MonkeyPatch, request: Any
) -> None:
    if request.node.callspec.params["mp"] != "stdlib":
        # However long a cluster start() once waited for a worker to take the
        # process, make it longer than this test may run: start() must not wait.
        monkeypatch.setattr("dmp.client.process.START_WAIT_S", 3600.0, raising=False)
    go, out = mp.Event(), mp.Queue()
    procs = [mp.Process(target=f.wait_event, args=(go, out)) for _ in range(MORE_THAN_THE_SLOTS)]
    try:
        for p in procs:
            p.start()  # in cluster mode every slot is busy (waiting for go) before the last ones
        go.set()
        assert [out.get(timeout=30) for _ in procs] == [True] * len(procs)
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0] * len(procs)
        assert all(isinstance(p.pid, int) for p in procs)
    finally:
        go.set()
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(10)


def test_terminate_a_process_waiting_for_a_slot(mp: Any) -> None:
    go, out = mp.Event(), mp.Queue()
    busy = [mp.Process(target=f.wait_event, args=(go, out)) for _ in range(MORE_THAN_THE_SLOTS - 2)]
    # (It touches no shared object: a process terminated while it holds a lock leaves it held.)
    late = mp.Process(target=f.sleep_forever)
    try:
        for p in busy:
            p.start()
        late.start()  # in cluster mode it waits for a slot
        late.terminate()
        late.join(30)
        assert late.exitcode == -signal.SIGTERM
        go.set()
        assert [out.get(timeout=30) for _ in busy] == [True] * len(busy)
        for p in busy:
            p.join(30)
        assert [p.exitcode for p in busy] == [0] * len(busy)
    finally:
        go.set()
        for p in [*busy, late]:
            if p.is_alive():
                p.kill()
            p.join(10)


_SCRIPT = """
    import os, sys, time

    mode, here = sys.argv[1], sys.argv[2]
    if mode == "stdlib":
        import multiprocessing
        mp = multiprocessing.get_context("fork")
    else:
        import dmp as mp
        if mode == "cluster":
            mp.connect(sys.argv[3], bytes.fromhex(sys.argv[4]) if sys.argv[4] else None)

    def child(here):
        open(os.path.join(here, "running"), "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(here, "go")) and time.monotonic() < deadline:
            time.sleep(0.02)
        with open(os.path.join(here, "done"), "w") as fh:
            fh.write("done")

    if __name__ == "__main__":
        mp.Process(target=child, args=(here,)).start()  # not daemonic, never joined
        open(os.path.join(here, "exiting"), "w").close()
"""


def _until(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_unjoined_child_is_waited_for_at_exit(mp: Any, request: Any, tmp_path: Path) -> None:
    mode = request.node.callspec.params["mp"]
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    argv = [sys.executable, str(script), mode, str(tmp_path)]
    if mode == "cluster":
        cluster = request.getfixturevalue("loopback_cluster")
        argv += [cluster.address, (cluster.authkey or b"").hex()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMP_")}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # The script's main code is over and the child runs: the script is exiting now.
        assert _until(
            lambda: (tmp_path / "exiting").exists() and (tmp_path / "running").exists(), 30
        ), (
            proc.poll(),
            proc.stdout.read() if proc.poll() is not None and proc.stdout else b"",
        )
        (tmp_path / "go").touch()
        output, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, output
        assert (tmp_path / "done").exists(), output
        assert (tmp_path / "done").read_text() == "done"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


_OPEN_POOL_SCRIPT = """
    import sys

    mode, method = sys.argv[1], sys.argv[2]
    if mode == "stdlib":
        import multiprocessing
        mp = multiprocessing.get_context(method)
    else:
        import dmp
        mp = dmp.get_context(method)
        if mode == "cluster":
            dmp.connect(sys.argv[3], bytes.fromhex(sys.argv[4]) if sys.argv[4] else None)

    def square(x):
        return x * x

    if __name__ == "__main__":
        pool = mp.Pool(2)  # never closed: the interpreter's exit ends it
        print(pool.map(square, range(4)))
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_pool_left_open_ends_quietly_at_exit(
    mp: Any, request: Any, tmp_path: Path, method: str
) -> None:
    mode = request.node.callspec.params["mp"]
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(_OPEN_POOL_SCRIPT))
    argv = [sys.executable, str(script), mode, method]
    if mode == "cluster":
        cluster = request.getfixturevalue("loopback_cluster")
        argv += [cluster.address, (cluster.authkey or b"").hex()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMP_")}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[0, 1, 4, 9]"
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
