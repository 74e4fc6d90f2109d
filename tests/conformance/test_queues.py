"""Queue, JoinableQueue, SimpleQueue and Pipe conformance."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

import pytest

from . import _funcs as f

pytestmark = pytest.mark.timeout(30)


def _start(mp: Any, target: Any, *args: Any) -> Any:
    p = mp.Process(target=target, args=args)
    p.start()
    return p


def _finish(*procs: Any) -> None:
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(5)


def _wait_until(pred: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


# --- Queue -------------------------------------------------------------------------


def test_queue_put_get_fifo(mp: Any) -> None:
    q = mp.Queue()
    items = [1, "two", (3,), {"four": 4}, None, b"six" * 1000]
    for item in items:
        q.put(item)
    assert [q.get(timeout=5) for _ in items] == items


def test_queue_get_timeout_raises_empty(mp: Any) -> None:
    q = mp.Queue()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.1)
    assert 0.05 <= time.monotonic() - t0 < 5
    with pytest.raises(queue.Empty):
        q.get(block=False)
    with pytest.raises(queue.Empty):
        q.get_nowait()


def test_queue_qsize_empty(mp: Any) -> None:
    q = mp.Queue()
    assert q.empty()
    assert q.qsize() == 0
    q.put(1)
    q.put(2)
    assert q.qsize() == 2
    # empty() lags behind put() until the feeder has flushed: poll.
    assert _wait_until(lambda: not q.empty())
    assert q.get(timeout=5) == 1
    assert q.qsize() == 1
    assert q.get(timeout=5) == 2
    assert q.qsize() == 0
    assert q.empty()


def test_queue_maxsize_full(mp: Any) -> None:
    q = mp.Queue(maxsize=2)
    assert not q.full()
    q.put(1)
    q.put_nowait(2)
    assert q.full()
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.1)
    with pytest.raises(queue.Full):
        q.put(3, block=False)
    assert q.get(timeout=5) == 1
    assert not q.full()
    q.put(3, timeout=5)
    assert [q.get(timeout=5), q.get(timeout=5)] == [2, 3]


def test_queue_close_join_thread(mp: Any) -> None:
    q = mp.Queue()
    q.put("x")
    assert q.get(timeout=5) == "x"
    q.close()
    q.join_thread()
    with pytest.raises(ValueError):
        q.put("y")


def test_queue_passed_to_process(mp: Any) -> None:
    q = mp.Queue()
    p = _start(mp, f.put_items, q, list(range(50)))
    try:
        assert [q.get(timeout=10) for _ in range(50)] == list(range(50))
    finally:
        _finish(p)
    assert p.exitcode == 0


def test_queue_both_directions(mp: Any) -> None:
    inq, outq = mp.Queue(), mp.Queue()
    p = _start(mp, f.echo_queue, inq, outq)
    try:
        for i in range(20):
            inq.put(("item", i))
        inq.put(None)
        assert [outq.get(timeout=10) for _ in range(20)] == [("item", i) for i in range(20)]
    finally:
        _finish(p)
    assert p.exitcode == 0


def test_queue_many_producers(mp: Any) -> None:
    q = mp.Queue()
    procs = [_start(mp, f.put_items, q, [(k, i) for i in range(20)]) for k in range(3)]
    try:
        got = [q.get(timeout=10) for _ in range(60)]
    finally:
        _finish(*procs)
    assert sorted(got) == sorted((k, i) for k in range(3) for i in range(20))
    # Each producer's items arrive in its own order.
    for k in range(3):
        assert [i for kk, i in got if kk == k] == list(range(20))


def test_queue_large_item(mp: Any) -> None:
    q = mp.Queue()
    blob = bytes(range(256)) * 20_000  # ~5 MB
    p = _start(mp, f.put_items, q, [blob])
    try:
        assert q.get(timeout=10) == blob
    finally:
        _finish(p)


# --- JoinableQueue -------------------------------------------------------------------


def test_joinable_queue_task_done_join(mp: Any) -> None:
    q, out = mp.JoinableQueue(), mp.Queue()
    p = _start(mp, f.joinable_consumer, q, out)
    try:
        for i in range(10):
            q.put(i)
        q.join()  # returns once the child called task_done() for each item
        assert sorted(out.get(timeout=5) for _ in range(10)) == [2 * i for i in range(10)]
        q.put(None)
        q.join()
    finally:
        _finish(p)
    assert p.exitcode == 0


def test_joinable_queue_task_done_too_many(mp: Any) -> None:
    q = mp.JoinableQueue()
    q.put(1)
    q.get(timeout=5)
    q.task_done()
    with pytest.raises(ValueError):
        q.task_done()
    q.join()  # nothing outstanding: returns at once


def test_joinable_queue_is_a_queue(mp: Any) -> None:
    q = mp.JoinableQueue(maxsize=1)
    q.put("a")
    assert q.full()
    with pytest.raises(queue.Empty):
        mp.JoinableQueue().get(timeout=0.05)
    assert q.get(timeout=5) == "a"
    q.task_done()


# --- SimpleQueue ----------------------------------------------------------------------


def test_simple_queue(mp: Any) -> None:
    q = mp.SimpleQueue()
    assert q.empty()
    q.put([1, 2])
    assert not q.empty()
    assert q.get() == [1, 2]
    assert q.empty()
    q.close()


def test_simple_queue_across_processes(mp: Any) -> None:
    q = mp.SimpleQueue()
    p = _start(mp, f.put_items, q, ["a", "b", "c"])
    try:
        assert [q.get() for _ in range(3)] == ["a", "b", "c"]
    finally:
        _finish(p)


# --- Pipe -----------------------------------------------------------------------------


def test_pipe_duplex_send_recv_poll(mp: Any) -> None:
    a, b = mp.Pipe()
    try:
        assert not b.poll()
        assert not b.poll(0.05)
        a.send({"k": [1, 2]})
        assert b.poll(5)
        assert b.recv() == {"k": [1, 2]}
        b.send("back")
        assert a.recv() == "back"
    finally:
        a.close()
        b.close()


def test_pipe_bytes(mp: Any) -> None:
    a, b = mp.Pipe()
    try:
        a.send_bytes(b"hello world")
        assert b.recv_bytes() == b"hello world"
        a.send_bytes(b"0123456789", 2, 5)  # offset, size
        assert b.recv_bytes() == b"23456"
        a.send_bytes(b"")
        assert b.recv_bytes() == b""
        a.send_bytes(b"abc")
        buf = bytearray(10)
        assert b.recv_bytes_into(buf, 4) == 3
        assert bytes(buf[4:7]) == b"abc"
    finally:
        a.close()
        b.close()


def test_pipe_recv_bytes_into_too_short(mp: Any) -> None:
    a, b = mp.Pipe()
    try:
        a.send_bytes(b"far too long for the buffer")
        with pytest.raises(mp.BufferTooShort) as info:
            b.recv_bytes_into(bytearray(4))
        # The whole message is attached to the exception.
        assert info.value.args[0] == b"far too long for the buffer"
    finally:
        a.close()
        b.close()


def test_pipe_one_way(mp: Any) -> None:
    r, w = mp.Pipe(duplex=False)
    try:
        w.send(123)
        assert r.recv() == 123
        with pytest.raises(OSError):
            r.send(1)
        with pytest.raises(OSError):
            w.recv()
        assert r.readable and not r.writable
        assert w.writable and not w.readable
    finally:
        r.close()
        w.close()


def test_pipe_eof_after_close(mp: Any) -> None:
    r, w = mp.Pipe(duplex=False)
    w.send("last")
    w.close()
    try:
        assert r.recv() == "last"
        with pytest.raises(EOFError):
            r.recv()
    finally:
        r.close()


def test_pipe_use_after_close_raises(mp: Any) -> None:
    a, b = mp.Pipe()
    a.close()
    b.close()
    assert a.closed
    with pytest.raises(OSError):
        a.send(1)


def test_pipe_with_process_duplex(mp: Any) -> None:
    parent, child = mp.Pipe()
    p = _start(mp, f.pipe_echo, child)
    try:
        child.close()  # the child owns its end now
        for obj in [1, "two", [3, 3, 3]]:
            parent.send(obj)
            assert parent.recv() == obj
        parent.send(None)
        parent.send_bytes(b"abc")
        assert parent.recv_bytes() == b"cba"
        with pytest.raises(EOFError):
            parent.recv()
    finally:
        parent.close()
        _finish(p)
    assert p.exitcode == 0


def test_pipe_with_process_one_way(mp: Any) -> None:
    r, w = mp.Pipe(duplex=False)
    p = _start(mp, f.pipe_send, w, list(range(10)))
    try:
        w.close()
        assert [r.recv() for _ in range(10)] == list(range(10))
        with pytest.raises(EOFError):
            r.recv()
    finally:
        r.close()
        _finish(p)


def test_pipe_context_manager(mp: Any) -> None:
    a, b = mp.Pipe()
    with a, b:
        a.send(1)
        assert b.recv() == 1
    assert a.closed and b.closed
