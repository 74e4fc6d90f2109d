"""Local mode's worker pipes (dmp.wire.pipechan, dmp_server.workerpipes): forked workers talk to
the embedded daemon over a socketpair; spawned ones keep ZeroMQ; a bad pipe harms nobody else."""

from __future__ import annotations

import gc
import os
import time
from typing import Any

import pytest

import dmp

pytestmark = pytest.mark.timeout(120)


def square(x: int) -> int:
    return x * x


def pid(_: Any = None) -> int:
    return os.getpid()


def _pipe() -> Any:
    from dmp.wire.pipechan import WorkerPipe

    # (Its siblings' loops, made in the parent before the forks, are here too, their pipes closed.)
    found = [o for o in gc.get_objects() if isinstance(o, WorkerPipe) and o.sock.fileno() >= 0]
    assert len(found) == 1, "a forked local worker has exactly one pipe"
    return found[0]


def on_pipe(daemon_inodes: set[int]) -> tuple[bool, int]:
    """In a worker: is it on a pipe, and how many of the daemon's pipe ends (its own
    pipe's and the other workers', named by socket inode) does it hold open?"""
    from dmp.wire.pipechan import WorkerPipe

    mine = [o for o in gc.get_objects() if isinstance(o, WorkerPipe) and o.sock.fileno() >= 0]
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            held += os.stat(int(fd)).st_ino in daemon_inodes
        except OSError:
            pass  # the listing's own fd, closed by now
    return len(mine) == 1, held


def garble_once(flag: str) -> str:
    """Write garbage into this worker's pipe the first time (the daemon must drop only this worker)."""
    if not os.path.exists(flag):
        with open(flag, "w"):
            pass
        _pipe().sock.sendall(b"\xff\xff\xff\xff" + b"garbage" * 10)
        return "garbled"
    return "clean"


def _wait(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_forked_workers_talk_over_pipes_and_hold_no_other_end() -> None:
    with dmp.Pool(2) as pool:
        assert pool.map(square, range(50)) == [x * x for x in range(50)]
        daemon = pool._engine.daemon
        assert daemon.pipes is not None
        ids = {h.worker_id.encode() for h in pool._engine.supervisor.handles.values()}
        assert set(daemon.pipes.by_ident) == ids
        # Every worker is on its pipe, and closed the daemon's ends (its own and the others').
        inodes = {os.fstat(p.sock.fileno()).st_ino for p in daemon.pipes.by_ident.values()}
        assert len(inodes) == 2
        for piped, others in pool.map(on_pipe, [inodes] * 8, chunksize=1):
            assert piped
            assert others == 0


def test_a_killed_worker_closes_its_pipe_and_is_replaced() -> None:
    with dmp.Pool(1) as pool:
        first = pool.apply(pid)
        daemon = pool._engine.daemon
        os.kill(first, 9)
        _wait(lambda: pool.apply(pid) != first)
        assert first not in {p.pid for p in pool._engine.processes}
        assert len(daemon.pipes.by_ident) == 1
        assert pool.apply(square, (7,)) == 49


def test_garbage_on_a_pipe_drops_that_worker_only(tmp_path: Any) -> None:
    flag = str(tmp_path / "garbled")
    with dmp.Pool(2) as pool:
        # The garbled worker's result is lost with its pipe; the task reruns on a fresh worker.
        assert pool.apply(garble_once, (flag,)) == "clean"
        assert os.path.exists(flag)
        assert pool.map(square, range(20)) == [x * x for x in range(20)]
        _wait(lambda: len(pool._engine.daemon.pipes.by_ident) == 2)


def test_spawned_workers_keep_zeromq() -> None:
    ctx = dmp.get_context("spawn")
    with ctx.Pool(1) as pool:
        assert pool.apply(square, (6,)) == 36
        assert pool._engine.daemon.pipes is None


def echo_big(data: bytes) -> bytes:
    return data[::-1]


def test_large_payloads_cross_the_pipe_both_ways() -> None:
    data = os.urandom(24 << 20)
    with dmp.Pool(2) as pool:
        results = [pool.apply_async(echo_big, (data,)) for _ in range(3)]
        for r in results:
            assert r.get(timeout=60) == data[::-1]


def connected_unix_sockets(_: Any = None) -> int:
    """In a worker: how many connected unix stream sockets it holds besides its own pipe
    (a daemon end, or another worker's end, inherited through the fork and left open)."""
    return _connected_unix(_pipe().sock.fileno())


def _connected_unix(own: int) -> int:
    import socket

    count = 0
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd == own:
            continue
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            dup = socket.fromfd(fd, socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:
            continue
        try:
            if dup.family == socket.AF_UNIX and dup.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM:
                dup.getpeername()  # raises for a socket with no peer (a listener)
                count += 1
        except OSError:
            pass
        finally:
            dup.close()
    return count


def test_workers_forked_together_hold_no_end_of_each_others_pipes() -> None:
    # What this process held before the pool (earlier tests' connections) a worker inherits too.
    before = _connected_unix(-1)
    with dmp.Pool(3) as pool:
        counts = pool.map(connected_unix_sockets, range(12), chunksize=1)
    assert max(counts) <= before, (counts, before)


def wait_for(flag: str) -> None:
    deadline = time.monotonic() + 60
    while not os.path.exists(flag):
        assert time.monotonic() < deadline, "the test never let the initializer finish"
        time.sleep(0.01)


def test_a_pipe_worker_gets_its_first_task_without_saying_hello(tmp_path: Any) -> None:
    # The workers are stuck in their initializer, before their loop could say
    # anything: the daemon knows them from the fork and has already handed one
    # the task (it waits on the pipe); once free, the worker finds it there.
    flag = str(tmp_path / "go")
    with dmp.Pool(2, initializer=wait_for, initargs=(flag,)) as pool:
        result = pool.apply_async(square, (9,))
        scheduler = pool._engine.daemon.scheduler
        _wait(lambda: len(scheduler.workers) == 2 and any(w.assigned for w in list(scheduler.workers.values())))
        assert not result.ready()
        with open(flag, "w"):
            pass
        assert result.get(timeout=60) == 81


def _pipes() -> int:
    """Pipe descriptors this process holds (a worker's sentinel and its parent-death pipe end)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}").startswith("pipe:")
        except OSError:
            pass  # the listing's own fd, closed by now
    return count


def test_ended_pools_leave_no_worker_pipe_open() -> None:
    # dmp.node.forkproc registers no Finalize for them: the supervisor closes
    # them when it reaps each worker, not the garbage collector.
    with dmp.Pool(2) as pool:
        assert pool.apply(square, (2,)) == 4
    before = _pipes()
    for _ in range(5):
        with dmp.Pool(2) as pool:
            assert pool.apply(square, (3,)) == 9
            assert _pipes() >= before + 4  # two of each worker's
        pool.join()
    assert _pipes() == before


def test_small_messages_the_socket_will_not_take_wait_in_order() -> None:
    # Small messages are sent with one send(); what the socket does not take
    # (a worker not reading) waits, cut mid-message, and goes out in order once it reads.
    import zmq
    from dmp_server.workerpipes import WorkerPipes

    from dmp.wire import direct, protocol

    pipes = WorkerPipes(1 << 30)
    pipe, theirs = pipes.prepare("w1", 0, sndbuf=4096)  # a small send buffer: soon full
    ours = pipe.sock
    pipes.add(pipe, 0)
    poller = zmq.Poller()
    pipes.watch(poller)
    sent = [protocol.ForgetJobs([i, i + 1]) for i in range(2000)]
    for msg in sent:
        assert pipes.send(b"w1", msg, [b"x" * 100], poller)
    pipe = pipes.by_ident[b"w1"]
    assert pipe.pending, "the socket took everything: the test did not fill it"
    reader, got = direct.Reader(), []
    theirs.settimeout(10)
    deadline = time.monotonic() + 30
    while len(got) < len(sent):
        assert time.monotonic() < deadline, "the waiting messages never came"
        for fd, events in poller.poll(0):
            if fd == ours.fileno():
                pipes.serve({fd: events}, poller, lambda *a: None)
        reader.feed(theirs.recv(1 << 16))
        while (whole := reader.next()) is not None:
            msg, frames = direct.decode(whole)
            got.append((msg.jobs, bytes(frames[0])))
    assert got == [(m.jobs, b"x" * 100) for m in sent]
    assert not pipe.pending
    pipes.close()
    theirs.close()


def slow_pid() -> int:
    time.sleep(0.2)
    return os.getpid()


def test_a_replacement_pipe_on_a_dead_workers_sentinel_number_is_still_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's sentinel is closed when it is reaped, and the replacement's pipe may
    get its number from the kernel (forced here: the new pipe's end is moved onto it).
    The reactor must forget the sentinel at once: left registered until its next poll,
    that poll unregistered the number, by then the new pipe's if a caller had joined the
    pipe first, and the replacement's results were never read (closing its pipe then
    raised KeyError)."""
    from dmp_server import daemon as daemon_mod
    from dmp_server import workerpipes

    from dmp.node import supervisor as supervisor_mod

    reaped: list[int] = []
    stale: list[int] = []
    reap, prepare = supervisor_mod.Supervisor.reap, workerpipes.WorkerPipes.prepare
    worker_died = daemon_mod.Daemon._worker_died

    def reap_and_note(self: Any, fd: int) -> Any:
        exited = reap(self, fd)
        if exited is not None:
            reaped.append(fd)
        return exited

    def prepare_on_that_number(self: Any, *args: Any, **kwds: Any) -> Any:
        pipe, theirs = prepare(self, *args, **kwds)
        number = reaped.pop() if reaped else -1
        if number >= 0 and number != pipe.sock.fileno():  # (else the kernel gave it that number itself)
            os.dup2(pipe.sock.fileno(), number)  # (the number is free: the sentinel is closed)
            moved = pipe.sock.__class__(fileno=number)
            moved.setblocking(False)
            pipe.sock.close()
            pipe.sock = moved
        return pipe, theirs

    def worker_died_and_check(self: Any, fd: int) -> None:
        worker_died(self, fd)
        if fd in self._watched:
            stale.append(fd)  # still watched as a sentinel, its number now the new pipe's

    monkeypatch.setattr(supervisor_mod.Supervisor, "reap", reap_and_note)
    monkeypatch.setattr(workerpipes.WorkerPipes, "prepare", prepare_on_that_number)
    monkeypatch.setattr(daemon_mod.Daemon, "_worker_died", worker_died_and_check)
    with dmp.Pool(1, maxtasksperchild=1) as pool:
        pids = []
        for _ in range(3):
            result = pool.apply_async(slow_pid)
            with pool._engine.turns.held():  # nobody steps: the TaskDone and the exit come due together
                time.sleep(0.6)
            pids.append(result.get(10))
        assert len(set(pids)) == 3
    assert not stale, f"reaped sentinels still watched: {stale}"
