"""The embedded manager reactor under bad input: clear errors, no harm done."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

import dmp
from dmp.wire import protocol
from tests.daemons import alive
from tests.rawpeer import raw_dealer, reply


def square(x: int) -> int:
    return x * x


@pytest.fixture
def pool():
    p = dmp.Pool(2)
    try:
        yield p
    finally:
        p.terminate()


@pytest.fixture
def raw(pool: Any) -> Iterator[Any]:
    with raw_dealer(pool) as sock:
        yield sock




# A Hello as protocol 2 wrote it (slots, node, max_tasks before version), and one from the future.
OLD_HELLO = [2, protocol.Hello.TYPE, [], "client", "x", "h", 1, 4, "", 0, protocol.software_version()]
NEW_HELLO = [protocol.PROTOCOL_VERSION + 1, protocol.Hello.TYPE, [], "client", "x", "h", 1]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fields", [OLD_HELLO, NEW_HELLO], ids=["protocol-2", "next"])
def test_other_protocol_version_gets_a_clear_error(pool, raw, fields) -> None:
    raw.send_multipart([b"", msgpack.packb(fields)])
    msg = reply(raw)
    assert isinstance(msg, protocol.Error)
    assert msg.code == protocol.ErrorCode.VERSION
    assert msg.text == f"peer speaks dmp protocol version {fields[0]}, this side speaks {protocol.PROTOCOL_VERSION}"
    assert pool.map(square, range(10)) == [x * x for x in range(10)]


@pytest.mark.timeout(30)
def test_garbage_frames_are_refused_and_the_pool_keeps_working(pool, raw) -> None:
    garbage = [
        [os.urandom(64)],
        [b"", os.urandom(100)],
        [b"", msgpack.packb({"not": "a list"})],
        [b"", msgpack.packb([protocol.PROTOCOL_VERSION, 999, []])],
        [b"", msgpack.packb([protocol.PROTOCOL_VERSION, protocol.Submit.TYPE, [5, 5], 1, [[0, 2]]])],
    ]
    for parts in garbage:
        raw.send_multipart(parts)
        msg = reply(raw)
        assert isinstance(msg, protocol.Error), parts
        assert msg.code in (protocol.ErrorCode.BAD_MESSAGE, protocol.ErrorCode.VERSION)
    assert pool.map(square, range(100)) == [x * x for x in range(100)]


@pytest.mark.timeout(30)
def test_unknown_peer_is_told_to_say_hello(pool, raw) -> None:
    raw.send_multipart([b"", protocol.encode(protocol.Submit(1, []))])
    msg = reply(raw)
    assert isinstance(msg, protocol.Error) and msg.code == protocol.ErrorCode.UNKNOWN_PEER
    assert pool.apply(square, (7,)) == 49


@pytest.mark.timeout(60)
def test_huge_generator_is_not_pulled_into_memory(pool) -> None:
    pulled = 0

    def gen():
        nonlocal pulled
        for i in range(10_000_000):
            pulled += 1
            yield i

    it = pool.imap(square, gen(), chunksize=10)
    for i, value in enumerate(it):
        assert value == i * i
        if i == 1000:
            break
    # Credit bounds what the feeder pulls ahead of the consumer.
    assert pulled < 1000 + 10 * (dmp._config.MAX_OUTSTANDING_TASKS + 64) + 10
    assert pulled < 10_000_000


@pytest.mark.timeout(60)
def test_worker_segfault_is_retried_then_reported(pool) -> None:
    def crash() -> None:
        import ctypes

        ctypes.string_at(0)

    with pytest.raises(dmp.WorkerLostError) as info:
        pool.apply(crash)
    assert info.value.exitcode == -11
    assert "SIGSEGV" in str(info.value)
    assert pool.apply(square, (3,)) == 9


@pytest.mark.timeout(60)
def test_abandoned_imap_over_an_endless_generator_frees_the_pool(pool) -> None:
    import itertools

    it = pool.imap(square, itertools.count(), chunksize=3)
    assert [next(it) for _ in range(5)] == [0, 1, 4, 9, 16]
    del it  # abandoned: its feeding stops and its credit comes back
    assert pool.map(square, range(50)) == [x * x for x in range(50)]
    unordered = pool.imap_unordered(square, itertools.count())
    assert next(unordered) >= 0
    del unordered
    pool.close()
    pool.join()  # nothing left waiting on the abandoned iterators


def exit_zero(marker: str) -> int:
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(0)
    return 7


@pytest.mark.timeout(60)
def test_os_exit_zero_mid_task_is_a_death_not_a_clean_exit(pool, tmp_path) -> None:
    assert pool.apply(exit_zero, (str(tmp_path / "m"),)) == 7

    def always_exit_zero() -> None:
        os._exit(0)

    with pytest.raises(dmp.WorkerLostError) as info:
        pool.apply(always_exit_zero)
    assert info.value.exitcode == 0


def test_a_pool_ended_before_its_engine_thread_ran_ends_whole() -> None:
    """Pool() does not wait for its engine thread to run (dmp.client.engine._start_soon):
    a pool terminated, or closed and joined, at once still ends every worker and its
    thread, and one used at once works without that thread having run."""
    for i in range(20):
        pool = dmp.Pool(1)
        workers = [p.pid for p in pool._pool]  # type: ignore[attr-defined]
        assert len(workers) == 1
        if i % 2:
            pool.terminate()
        else:
            assert pool.apply(os.getpid) != os.getpid()
            pool.close()
        pool.join()
        assert not any(alive(pid) for pid in workers), "a worker outlived its pool"
    engines = [t for t in threading.enumerate() if t.name == "dmp-engine"]
    for t in engines:
        t.join(10)
    assert not any(t.is_alive() for t in engines), "an engine thread outlived its pool"


def _pools_in_turn(n: int, errors: list[BaseException]) -> None:
    try:
        for i in range(n):
            pool = dmp.Pool(2)
            if i % 2:
                pool.terminate()
            else:
                assert pool.map(abs, range(-5, 5)) == [abs(x) for x in range(-5, 5)]
                pool.close()
            pool.join()
    except BaseException as exc:  # the test reads them
        errors.append(exc)


def test_pools_started_and_ended_in_several_threads_at_once() -> None:
    """Each Pool start runs multiprocessing's _cleanup(), whose waitpid may reap
    another thread's pool's workers as that pool ends: its stop() then found no
    exit code and SIGKILLed a pid no longer its own (ProcessLookupError, or a
    reused pid). It now signals only a worker whose sentinel says it runs."""
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_pools_in_turn, args=(40, errors)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread's pools did not end"
    assert errors == []
