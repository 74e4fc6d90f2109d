"""Cluster Pipe ends against a real `dmp manager`: what happens when the manager goes away."""

from __future__ import annotations

import pytest

from dmp.client import pipes
from dmp.errors import ManagerUnavailableError

pytestmark = pytest.mark.timeout(60)


def test_a_recv_fails_when_the_manager_dies_and_close_still_closes(daemon) -> None:
    a, b = pipes.create(daemon.address, True)
    a.send("before")
    assert b.recv() == "before"
    daemon.kill_manager()
    with pytest.raises(ManagerUnavailableError):
        b.recv()  # never waits forever: the manager's silence fails it
    a.close()  # no error: the pipe is gone with its manager
    b.close()
    assert a.closed and b.closed
    with pytest.raises(OSError):
        a.send(1)
