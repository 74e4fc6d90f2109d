"""Pipe connections beyond the basics of test_queues.py: end of file, broken pipes, limits, poll."""

from __future__ import annotations

from typing import Any

import pytest

from . import _funcs as f

pytestmark = pytest.mark.timeout(30)


def _finish(p: Any) -> None:
    p.join(10)
    if p.is_alive():
        p.kill()
        p.join(5)


@pytest.mark.parametrize("how", ["return", "exit", "kill"])
def test_pipe_eof_when_the_child_leaves_without_closing(mp: Any, how: str) -> None:
    r, w = mp.Pipe(duplex=False)
    p = mp.Process(target=f.pipe_send_then_leave, args=(w, [1, "two"], how))
    p.start()
    try:
        w.close()
        assert r.recv() == 1
        assert r.recv() == "two"
        with pytest.raises(EOFError):
            r.recv()
    finally:
        r.close()
        _finish(p)


def test_pipe_poll_answers_true_at_eof(mp: Any) -> None:
    r, w = mp.Pipe(duplex=False)
    w.send("x")
    w.close()
    try:
        assert r.poll(5)
        assert r.recv() == "x"
        assert r.poll(5)  # at EOF, recv() would not wait
        with pytest.raises(EOFError):
            r.recv()
    finally:
        r.close()


def test_pipe_poll_none_waits_for_the_child(mp: Any) -> None:
    parent, child = mp.Pipe()
    p = mp.Process(target=f.pipe_reply_once, args=(child,))
    p.start()
    try:
        child.close()
        parent.send(21)
        assert parent.poll(None)
        assert parent.recv() == 42
    finally:
        parent.close()
        _finish(p)
    assert p.exitcode == 0


@pytest.mark.parametrize("duplex", [True, False])
def test_pipe_send_after_the_other_end_closed_raises_broken_pipe(mp: Any, duplex: bool) -> None:
    r, w = mp.Pipe(duplex)
    r.close()
    try:
        with pytest.raises(BrokenPipeError):
            w.send("nobody reads this")
    finally:
        w.close()


def test_pipe_recv_bytes_longer_than_maxlength(mp: Any) -> None:
    a, b = mp.Pipe()
    r, w = mp.Pipe(duplex=False)
    try:
        a.send_bytes(b"0123456789")
        with pytest.raises(ValueError):
            b.recv_bytes(-1)
        with pytest.raises(OSError, match="bad message length"):
            b.recv_bytes(5)
        # As multiprocessing: the stream is no longer trusted for reading.
        assert not b.readable and not b.closed
        with pytest.raises(OSError):
            b.recv()
        b.send("still writes")
        assert a.recv() == "still writes"
        w.send_bytes(b"0123456789")
        with pytest.raises(OSError, match="bad message length"):
            r.recv_bytes(5)
        assert r.closed  # a one-way end that cannot read is closed
    finally:
        for conn in (a, b, r, w):
            conn.close()


def test_pipe_send_bytes_bad_offsets(mp: Any) -> None:
    a, b = mp.Pipe()
    try:
        with pytest.raises(ValueError):
            a.send_bytes(b"abc", -1)
        with pytest.raises(ValueError):
            a.send_bytes(b"abc", 4)
        with pytest.raises(ValueError):
            a.send_bytes(b"abc", 1, 3)
        with pytest.raises(ValueError):
            a.send_bytes(b"abc", 0, -1)
        a.send_bytes(memoryview(bytearray(b"xyz")), 1)
        assert b.recv_bytes() == b"yz"
        a.send(b"sent as an object")
        buf = bytearray(200)
        n = b.recv_bytes_into(buf)  # an object's pickle is a message like any other
        import pickle

        assert pickle.loads(bytes(buf[:n])) == b"sent as an object"
    finally:
        a.close()
        b.close()


def test_pipe_recv_bytes_into_an_array(mp: Any) -> None:
    import array

    a, b = mp.Pipe()
    try:
        arr = array.array("i", [0, 0, 0, 0])
        with pytest.raises(ValueError):
            b.recv_bytes_into(arr, -1)
        with pytest.raises(ValueError):
            b.recv_bytes_into(arr, 17)
        a.send_bytes(array.array("i", [7, 8]))
        assert b.recv_bytes_into(arr, 4) == 8  # offset and size in bytes
        assert list(arr) == [0, 7, 8, 0]
    finally:
        a.close()
        b.close()


def test_pipe_closed_end_refuses_everything(mp: Any) -> None:
    a, b = mp.Pipe()
    a.close()
    a.close()  # twice is fine
    try:
        for use in (lambda: a.send(1), a.recv, a.poll, lambda: a.send_bytes(b"x"), a.recv_bytes,
                    lambda: a.recv_bytes_into(bytearray(4)), a.fileno):
            with pytest.raises(OSError):
                use()
        assert b.poll(5)  # the other end sees the EOF
        with pytest.raises(EOFError):
            b.recv()
    finally:
        b.close()


def test_pipe_end_dropped_without_close_is_closed(mp: Any) -> None:
    import gc

    r, w = mp.Pipe(duplex=False)
    w.send("kept")
    del w
    gc.collect()
    try:
        assert r.recv() == "kept"
        with pytest.raises(EOFError):
            r.recv()
    finally:
        r.close()


# --- cluster mode only ------------------------------------------------------------------


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Any:
    """dmp connected to the session's loopback cluster."""
    from .conftest import _connect

    return _connect(request)


def test_cluster_pipe_has_no_fileno(cluster: Any) -> None:
    import io
    import multiprocessing.connection

    r, w = cluster.Pipe(duplex=False)
    try:
        with pytest.raises(io.UnsupportedOperation):
            r.fileno()
        # multiprocessing.connection.wait() needs descriptors: it refuses, it does not hang
        with pytest.raises(ValueError):
            multiprocessing.connection.wait([r], timeout=0)
    finally:
        r.close()
        w.close()


def test_cluster_pipe_end_through_a_managed_queue(cluster: Any) -> None:
    r, w = cluster.Pipe(duplex=False)
    q = cluster.Queue()
    p = cluster.Process(target=f.pipe_from_queue, args=(q, ["a", "b"]))
    p.start()
    try:
        q.put(w)
        w.close()  # the copy in the queue keeps the end open
        assert [r.recv(), r.recv()] == ["a", "b"]
        with pytest.raises(EOFError):
            r.recv()
    finally:
        r.close()
        _finish(p)
    assert p.exitcode == 0


def test_cluster_pipe_pickled_copy_keeps_the_end_open(cluster: Any) -> None:
    import pickle

    r, w = cluster.Pipe(duplex=False)
    try:
        data = pickle.dumps(w)
        w.close()
        assert not r.poll(0.2)  # not EOF: the pickled copy is a handle of the end
        copy = pickle.loads(data)
        copy.send("from the copy")
        assert r.recv() == "from the copy"
        copy.close()
        with pytest.raises(EOFError):
            r.recv()
    finally:
        r.close()


def test_cluster_pipe_interrupted_recv_takes_nothing(cluster: Any) -> None:
    import _thread
    import threading

    r, w = cluster.Pipe(duplex=False)
    timer = threading.Timer(0.2, _thread.interrupt_main)
    try:
        with pytest.raises(KeyboardInterrupt):
            timer.start()  # inside: a loaded machine may fire it before start() returns
            r.recv()
        w.send("after")
        assert r.recv() == "after"  # the cancelled recv did not take it
    finally:
        timer.cancel()
        r.close()
        w.close()
