"""Large payloads through a real loopback cluster (client, manager, node worker and back).

Big buffers travel as their own ZeroMQ frames, the manager forwards the frames
it received without copying them, and the receiving side rebuilds objects on
the received memory (docs/performance.md, "Cluster mode: where one array's
bytes go"). These tests check that
every kind of buffer comes back exactly, and that no buffer is shared where the
caller could see it: results are the caller's own, apart from its arguments and
from each other, before and after later maps.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dmp
from tests.byvalue import pickled_by_value
from tests.daemons import Daemons, start_cluster

np = pytest.importorskip("numpy")

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
KEY = b"payload key"


@pytest.fixture(scope="module", autouse=True)
def _functions_by_value() -> Iterator[None]:
    """This module's functions and Blob travel by value (nodes cannot import tests/)."""
    with pickled_by_value(sys.modules[__name__]):
        yield


class Blob:
    """Pickles its buffer out of band at protocol 5 (as numpy arrays do); rebuilt on the received one."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> Any:
        return Blob, (pickle.PickleBuffer(self.data),)


def identity(x: Any) -> Any:
    return x


def bump(a: Any) -> Any:
    """Changes its argument in place (the worker's copy) and returns it."""
    a += 1
    return a


def as_bytes(x: Any) -> bytes:
    """What a payload holds, whatever its kind."""
    if isinstance(x, Blob):
        x = x.data
    if isinstance(x, np.ndarray):
        data: bytes = x.tobytes()
        return data
    return bytes(x)


@pytest.fixture(scope="module", params=[None, KEY], ids=["no key", "key"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """(address, authkey) of a manager and one node of two workers, shared by this module's tests."""
    daemons: Daemons = start_cluster(Path(tmp_path_factory.mktemp("daemons")), nodes=1, authkey=request.param)
    try:
        yield daemons.address, request.param
    finally:
        daemons.stop()


def _pool(cluster: tuple[str, Any]) -> Any:
    address, key = cluster
    return dmp.Pool(2, address=address, authkey=key)


def _payloads() -> list[Any]:
    rng = np.random.default_rng(5)
    big = rng.integers(0, 256, 3 * MiB + 7, dtype=np.uint8)
    return [
        big,
        rng.standard_normal((512, 700)),  # float64, 2-D, 2.7 MiB
        np.asfortranarray(rng.integers(0, 1 << 30, (600, 500), dtype=np.int64)),
        big.tobytes(),
        bytearray(big.tobytes()[: 2 * MiB]),
        memoryview(big.tobytes()[: MiB + 3]),
        Blob(bytearray(rng.bytes(MiB + 1))),
        b"small" * 100,  # in band: below the out-of-band threshold
        np.arange(10),
    ]


def test_every_kind_of_buffer_comes_back_exactly(cluster: tuple[str, Any]) -> None:
    payloads = _payloads()
    expected = [(type(p), as_bytes(p)) for p in payloads]
    with _pool(cluster) as pool:
        out = pool.map(identity, payloads, chunksize=1)
        several = pool.apply(identity, (payloads[:4],))  # several big buffers in one task
    assert [(type(o), as_bytes(o)) for o in out] == expected
    for sent, got in zip(payloads, out):
        if isinstance(sent, np.ndarray):
            assert (got.dtype, got.shape, got.flags.f_contiguous) == (sent.dtype, sent.shape, sent.flags.f_contiguous)
    assert [as_bytes(o) for o in several] == [b for _, b in expected[:4]]


def test_results_are_the_callers_own(cluster: tuple[str, Any]) -> None:
    """Changing arguments after map returns, changing one result, or running more maps
    changes no other result: nothing the caller holds shares memory with anything else."""
    rng = np.random.default_rng(6)
    args = [rng.integers(0, 200, 2 * MiB, dtype=np.uint8) for _ in range(4)]
    kept = [a.copy() for a in args]
    with _pool(cluster) as pool:
        first = pool.map(identity, args, chunksize=1)
        bumped = pool.map(bump, args, chunksize=1)  # the workers change their copies only
        for a in args:
            a[:] = 255  # the caller reuses its buffers
        assert all(np.array_equal(r, k) for r, k in zip(first, kept))
        assert all(np.array_equal(r, k + 1) for r, k in zip(bumped, kept))
        first[0][:] = 7  # results are writable, like multiprocessing's, and apart
        assert all(np.array_equal(r, k) for r, k in zip(first[1:], kept[1:]))
        assert all(np.array_equal(r, k + 1) for r, k in zip(bumped, kept))
        later = pool.map(identity, [np.full(2 * MiB, i, dtype=np.uint8) for i in range(8)], chunksize=1)
        assert [int(r[0]) for r in later] == list(range(8))
    assert np.all(first[0] == 7)
    assert all(np.array_equal(r, k) for r, k in zip(first[1:], kept[1:]))
    assert all(np.array_equal(r, k + 1) for r, k in zip(bumped, kept))
