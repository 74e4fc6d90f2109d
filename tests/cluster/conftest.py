"""Fixtures that start real daemons (manager, worker nodes) on loopback and kill them by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from dmp.cli import fetch_status
from tests.ports import free_port


@dataclass
class Cluster:
    address: str
    authkey: bytes | None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dmp", *args],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        return proc

    def worker(self, name: str, processes: int = 2) -> subprocess.Popen[bytes]:
        return self.spawn("worker", self.address, "--processes", str(processes), "--name", name)

    def wait_slots(self, n: int, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            status = fetch_status(self.address, self.authkey, 2.0)
            if status is not None and status["slots"] >= n:
                return status
            time.sleep(0.1)
        raise AssertionError(f"cluster never reached {n} slots: {status}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def start_cluster(nodes: int = 2, authkey: bytes | None = None, manager_args: tuple[str, ...] = ()) -> Cluster:
    address = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ)
    env.pop("DMP_ADDRESS", None)
    if authkey:
        env["DMP_AUTHKEY"] = authkey.decode()
    else:
        env.pop("DMP_AUTHKEY", None)
    cluster = Cluster(address, authkey, env=env)
    try:
        cluster.spawn("manager", "--bind", address, *manager_args)
        for i in range(nodes):
            cluster.worker(f"node{i + 1}")
        if nodes:
            cluster.wait_slots(2 * nodes)
    except BaseException:  # a cluster that never came up leaves no daemons behind
        cluster.stop()
        raise
    return cluster


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = start_cluster()
    try:
        yield c
    finally:
        c.stop()
