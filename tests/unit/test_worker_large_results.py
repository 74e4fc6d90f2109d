"""A worker sends a large result at once, in a TaskDone of its own, not batched
behind the tasks queued after it (the batch closes at FLUSH_BYTES). The real
worker loop on a real socketpair, in a thread of this process."""

from __future__ import annotations

import socket
import threading

import pytest

from dmp import serialization
from dmp.node import runners, worker
from dmp.wire import direct, protocol

pytestmark = pytest.mark.timeout(60)


def _identity(x: object) -> object:
    return x


def _read(sock: socket.socket, reader: direct.Reader) -> tuple[protocol.Message, list[bytes]]:
    while (whole := reader.next()) is None:
        if not reader.recv_from(sock, 1 << 16):
            raise AssertionError("the worker closed its pipe")
    msg, frames = direct.decode(whole)
    return msg, [bytes(f) for f in frames]


def test_each_large_result_leaves_in_its_own_task_done() -> None:
    ours, theirs = socket.socketpair()
    ours.settimeout(30)
    cfg = worker.WorkerConfig(address="", node="test", worker_id="w-test", pipe=theirs)
    loop = worker.WorkerLoop(cfg)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    reader = direct.Reader()
    try:
        hello, _ = _read(ours, reader)
        assert isinstance(hello, protocol.Hello)
        size = worker.FLUSH_BYTES + 1
        args = [bytes([i]) * size for i in range(3)]
        runner = serialization.dumps(runners.MapChunk(_identity, False), by_value=False)
        tasks = [serialization.dumps([a], by_value=False) for a in args]
        frames = runner + [f for t in tasks for f in t]
        items = [[10 + i, 1, 0, len(t)] for i, t in enumerate(tasks)]
        # All three in one Dispatch: the worker has the next task queued as each ends.
        direct.send(ours, direct.encode(protocol.Dispatch([[1, len(runner), 0]], items), frames))
        got: list[list[object]] = []
        results: list[object] = []
        while len(results) < 3:
            msg, out = _read(ours, reader)
            assert isinstance(msg, protocol.TaskDone), msg
            got.append(msg.items)
            pos = 0
            for item in msg.items:
                assert item[2] == int(protocol.Status.OK)
                results.append(serialization.loads(out[pos : pos + item[3]]))
                pos += item[3]
        assert [len(items) for items in got] == [1, 1, 1]
        assert results == [[a] for a in args]
    finally:
        direct.send(ours, direct.encode(protocol.Bye("test over")))
        thread.join(timeout=30)
        ours.close()
    assert not thread.is_alive()
