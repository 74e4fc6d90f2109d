"""A real `dmp manager` daemon on loopback per test (tests/daemons.py), killed by PID afterwards."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import dmp
from tests.daemons import Daemons

Daemon = Daemons


def start_daemon(authkey: bytes | None = None, logdir: Path | None = None) -> Daemons:
    """A manager with no nodes, listening (port 0, read back) and answering `dmp status`.

    Raises:
        AssertionError: it did not come up (its log is in the message); nothing is left running.
    """
    d = Daemons(logdir, authkey=authkey)
    d.start(nodes=0)
    return d


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemons]:
    d = start_daemon(logdir=tmp_path / "daemon")
    try:
        yield d
    finally:
        d.stop()


def run_script(code: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (a client on another 'host')."""
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def manager() -> Iterator[dmp.managers.SyncManager]:
    """A local manager (``dmp.Manager()``), shut down afterwards."""
    m = dmp.Manager()
    try:
        yield m
    finally:
        m.shutdown()
