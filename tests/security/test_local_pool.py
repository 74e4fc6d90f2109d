"""A local pool's manager is its process's alone: another local user, who can list
every abstract unix socket in /proc/net/unix and connect to any of them (they have
no permissions), must not be able to join it and run code in its workers.

Before, a fork pool's embedded manager listened on ``ipc://@dmp-PID-...`` without a
key: ``dmp.Pool(address=that)`` from any process ran its tasks in the pool's workers.
"""

from __future__ import annotations

import os
import re

import pytest

import dmp
from dmp.errors import AuthenticationError, ManagerUnavailableError

pytestmark = pytest.mark.timeout(120)


def square(x: int) -> int:
    return x * x


def _our_abstract_sockets() -> set[str]:
    with open("/proc/net/unix") as fh:
        return set(re.findall(rf"@(dmp-{os.getpid()}-[0-9a-f]+)", fh.read()))


def test_a_fork_pool_listens_nowhere() -> None:
    before = _our_abstract_sockets()
    with dmp.Pool(2) as pool:
        assert pool.map(square, range(20)) == [x * x for x in range(20)]
        assert pool._engine.daemon.endpoints == []
        assert _our_abstract_sockets() == before, "a fork pool's manager listens on an abstract socket"


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_spawn_pools_manager_refuses_a_client_without_its_key(method: str) -> None:
    ctx = dmp.get_context(method)
    with ctx.Pool(1) as pool:
        assert pool.apply(square, (3,)) == 9
        (endpoint,) = pool._engine.daemon.endpoints
        assert endpoint[len("ipc://@"):] in _our_abstract_sockets()  # what another local user would find
        with pytest.raises((AuthenticationError, ManagerUnavailableError)):
            with dmp.Pool(1, address=endpoint, authkey=b"") as intruder:
                intruder.apply(os.getpid)
        with pytest.raises((AuthenticationError, ManagerUnavailableError)):
            with dmp.Pool(1, address=endpoint, authkey=os.urandom(32)) as intruder:
                intruder.apply(os.getpid)
        assert pool.map(square, range(10)) == [x * x for x in range(10)]  # and the pool goes on
