"""A real `dmp manager` daemon on loopback per test, killed by PID afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from dmp.cli import fetch_status
from tests.ports import free_port


@dataclass
class Daemon:
    address: str
    authkey: bytes | None
    proc: subprocess.Popen[bytes]
    env: dict[str, str]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_daemon(authkey: bytes | None = None) -> Daemon:
    address = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ)
    env.pop("DMP_ADDRESS", None)
    env.pop("DMP_AUTHKEY", None)
    if authkey:
        env["DMP_AUTHKEY"] = authkey.decode()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dmp", "manager", "--bind", address],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    daemon = Daemon(address, authkey, proc, env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if fetch_status(address, authkey, 1.0) is not None:
            return daemon
        if proc.poll() is not None:
            break
    daemon.stop()
    raise AssertionError(f"manager daemon did not come up: {proc.stderr.read() if proc.stderr else ''}")


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = start_daemon()
    try:
        yield d
    finally:
        d.stop()


def run_script(code: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (a client on another 'host')."""
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
