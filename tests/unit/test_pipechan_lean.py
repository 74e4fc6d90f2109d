"""The worker pipe's short paths (dmp.wire.pipechan): decode_dispatch reads a Dispatch exactly as
direct.decode does, or declines and leaves it to direct.decode (which refuses what it must);
send_done writes the very bytes send(TaskDone) writes. Over real socketpairs."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from dmp.wire import direct, protocol
from dmp.wire.pipechan import WorkerPipe, close_inherited, decode_dispatch

pytestmark = pytest.mark.timeout(30)

_P = direct.PREFIX_STRUCT.size

DISPATCHES: list[tuple[list[list[Any]], list[list[int]], list[bytes]]] = [
    ([], [], []),  # nothing (never sent, but well formed)
    ([[7, 0, 0]], [[1, 7, 0, 1]], [b"task"]),  # a local apply: no runner, one task
    ([[7, 1, 2.5]], [[1, 7, 0, 1], [2, 7, 1, 1]], [b"runner", b"t1", b"t2"]),  # a runner, a timeout
    ([[7, 1, 0], [8, 2, 3]], [[1, 8, 0, 2]], [b"r7", b"r8a", b"", b"x", b"y"]),  # empty frames too
    ([], [[5, 7, 2, 0], [6, 7, 0, 1]], [b"z"]),  # tasks of a job the worker has
    ([[1 << 40, 0, 0]], [[1 << 50, 1 << 40, 0, 1]], [b"k" * 30000]),  # big keys, a packed frame near the limit
]


def _whole(msg: protocol.Message, frames: list[Any]) -> bytes:
    return b"".join(bytes(b) for b in direct.encode(msg, frames))


def _framed(head: Any, payload: bytes = b"") -> bytes:
    header = msgpack.packb(head, use_bin_type=True)
    return direct.PREFIX_STRUCT.pack(len(header), len(payload)) + header + payload


def _same(got: tuple[protocol.Message, list[Any]], want: tuple[protocol.Message, list[Any]]) -> None:
    assert type(got[0]) is type(want[0])
    assert got[0].fields() == want[0].fields()
    assert [bytes(f) for f in got[1]] == [bytes(f) for f in want[1]]
    assert [type(f) for f in got[1]] == [type(f) for f in want[1]]


@pytest.mark.parametrize("jobs,tasks,frames", DISPATCHES)
def test_decode_dispatch_reads_every_shape_as_direct_decode(jobs: Any, tasks: Any, frames: Any) -> None:
    data = _whole(protocol.Dispatch(jobs, tasks), frames)
    got = decode_dispatch(data)
    assert got is not None
    _same(got, direct.decode(memoryview(data)))


GOOD = _whole(protocol.Dispatch([[7, 0, 0]], [[1, 7, 0, 1]]), [b"task"])
V, D = protocol.PROTOCOL_VERSION, protocol.Dispatch.TYPE

DECLINED = {
    "two messages in one read": GOOD + GOOD,
    "a message cut short": GOOD[:-1],
    "only a prefix": GOOD[:5],
    "another type": _whole(protocol.ForgetJobs([7]), []),
    "a frame of its own (-1)": _framed([V, D, [-1], [], [[1, 7, 0, 1]]]),
    "not msgpack": direct.PREFIX_STRUCT.pack(3, 0) + b"\xc1\xc1\xc1",
    "another version": _framed([V + 1, D, [4], [[7, 0, 0]], [[1, 7, 0, 1]]], b"task"),
    "a bool for the version": _framed([True, D, [], [], []]),
    "a float timeout as bool": _framed([V, D, [4], [[7, 0, True]], [[1, 7, 0, 1]]], b"task"),
    "a job of two fields": _framed([V, D, [4], [[7, 0]], [[1, 7, 0, 1]]], b"task"),
    "a task key as text": _framed([V, D, [4], [[7, 0, 0]], [["1", 7, 0, 1]]], b"task"),
    "a negative frame count": _framed([V, D, [], [[7, -1, 0]], [[1, 7, 0, 1]]]),
    "frames the tasks do not claim": _framed([V, D, [4, 1], [[7, 0, 0]], [[1, 7, 0, 1]]], b"taskx"),
    "sizes that miss the payload": _framed([V, D, [3], [[7, 0, 0]], [[1, 7, 0, 1]]], b"task"),
    "jobs as a map": _framed([V, D, [], {"a": 1}, []]),
    "a trailing field": _framed([V, D, [], [], [], 0]),
    "a missing field": _framed([V, D, [], []]),
}


@pytest.mark.parametrize("name", sorted(DECLINED))
def test_decode_dispatch_declines_anything_else(name: str) -> None:
    assert decode_dispatch(DECLINED[name]) is None


@pytest.fixture
def pipe() -> Iterator[tuple[WorkerPipe, socket.socket]]:
    worker_end, daemon_end = socket.socketpair()
    try:
        yield WorkerPipe(worker_end), daemon_end
    finally:
        worker_end.close()
        daemon_end.close()


def _receive(chan: WorkerPipe) -> tuple[protocol.Message, list[Any]]:
    assert chan.poll(5.0)
    got = chan.receive()
    assert got is not None
    return got


@pytest.mark.parametrize("jobs,tasks,frames", DISPATCHES)
def test_a_pipe_receives_each_dispatch_as_before(pipe: Any, jobs: Any, tasks: Any, frames: Any) -> None:
    chan, daemon = pipe
    data = _whole(protocol.Dispatch(jobs, tasks), frames)
    daemon.sendall(data)
    _same(_receive(chan), direct.decode(memoryview(data)))


def test_two_messages_in_one_read_still_come_in_order(pipe: Any) -> None:
    chan, daemon = pipe
    daemon.sendall(GOOD + _whole(protocol.ForgetJobs([7]), []))
    first, second = _receive(chan), _receive(chan)
    assert isinstance(first[0], protocol.Dispatch) and bytes(first[1][0]) == b"task"
    assert isinstance(second[0], protocol.ForgetJobs) and second[0].jobs == [7]


@pytest.mark.parametrize(
    "name", ["not msgpack", "another version", "a bool for the version", "a trailing field", "jobs as a map"]
)
def test_a_malformed_first_dispatch_is_still_refused(pipe: Any, name: str) -> None:
    """What direct.decode refuses ends the pipe (a Bye naming the bad message), as before."""
    chan, daemon = pipe
    daemon.sendall(DECLINED[name])
    msg, frames = _receive(chan)
    assert isinstance(msg, protocol.Bye) and frames == []
    assert "bad message on the worker pipe" in msg.reason


def test_a_dispatch_cut_in_two_reads_is_whole_once_its_rest_comes(pipe: Any) -> None:
    chan, daemon = pipe
    daemon.sendall(GOOD[:10])
    assert chan.poll(5.0)
    assert chan.receive() is None
    daemon.sendall(GOOD[10:])
    _same(_receive(chan), direct.decode(memoryview(GOOD)))


ITEMS = [[1, 0, int(protocol.Status.OK), 1, 0.25, ""]]


@pytest.mark.parametrize(
    "items,frames",
    [
        (ITEMS, [b"result"]),
        ([], []),
        ([*ITEMS, [2, 1, int(protocol.Status.RAISED), 2, 0.0, ""]], [b"r", b"", b"e"]),
        (ITEMS, [b"x" * (direct.JOIN_BELOW + 1)]),  # big: the general send
        (ITEMS, [memoryview(b"view")]),  # not bytes: the general send
        (ITEMS, [bytearray(b"mutable")]),
    ],
)
def test_send_done_writes_what_send_taskdone_writes(pipe: Any, items: Any, frames: Any) -> None:
    chan, daemon = pipe
    want = _whole(protocol.TaskDone(items), frames)
    chan.send_done(items, frames)
    got = b""
    daemon.settimeout(5.0)
    while len(got) < len(want):
        got += daemon.recv(1 << 20)
    assert got == want


def test_close_inherited_closes_open_ends_and_skips_closed_ones() -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    c.close()
    fd = a.fileno()
    try:
        close_inherited((a, c))
        assert a.fileno() == -1 and c.fileno() == -1
        with pytest.raises(OSError):
            os.fstat(fd)
        assert b.recv(1) == b""  # the other end sees EOF: nothing else held it
    finally:
        for s in (a, b, c, d):
            s.close()


_TAKEN: list[bool] = []


def _spied_decode(data: bytes) -> Any:
    got = decode_dispatch(data)
    _TAKEN.append(got is not None)
    return got


def _taken(x: int) -> tuple[int, list[bool]]:
    return x * x, list(_TAKEN)


def test_a_pools_dispatches_take_the_short_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Dispatches a local pool really sends (apply, map with a runner) are read by decode_dispatch:
    if their shape ever stopped fitting it, the short path would silently never be taken. (Only the
    first message to a fresh worker is sure to come alone in its read; later ones may share one.)"""
    import dmp
    from dmp.wire import pipechan

    monkeypatch.setattr(pipechan, "decode_dispatch", _spied_decode)  # inherited by the forked workers
    with dmp.Pool(1) as pool:
        assert pool.apply(_taken, (7,)) == (49, [True])
        results = pool.map(_taken, range(3), chunksize=1)
    assert [r[0] for r in results] == [0, 1, 4]
    assert any(results[-1][1][1:]), "no Dispatch of the map took the short path"
