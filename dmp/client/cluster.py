"""Operating a cluster from Python: status(), wait_for_workers() and LocalCluster.

    status()            one StatusRequest on a fresh DEALER -> the `dmp status --json` dict
    wait_for_workers()  status() until enough slots, or dmp.TimeoutError
    LocalCluster        `dmp manager` + N `dmp worker` subprocesses on loopback, found
                        through the manager file; stopped (by pid) on exit and at exit
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from typing import Any

from dmp import _config
from dmp.deaths import parse_size
from dmp.errors import AuthenticationError, ManagerUnavailableError, TimeoutError

# How often wait_for_workers() and LocalCluster ask the manager again.
POLL_S = 0.1
# How long LocalCluster waits for its daemons to come up, and to go away.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def fetch_status(address: str, key: bytes | None, timeout: float) -> dict[str, Any] | None:
    """Ask the manager at ``address`` for its status; None if it did not answer in ``timeout`` s.

    Raises:
        AuthenticationError: the manager refused our authkey (or lack of one).
    """
    from dmp.wire import peer, protocol, transport

    chan = peer.connect(address, key, linger_ms=0)
    refused = False
    try:
        chan.send(protocol.Hello(protocol.Role.STATUS, "status", socket.gethostname(), os.getpid()))
        chan.send(protocol.StatusRequest())
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not peer.wait_readable(chan, left):
                break
            try:
                _, msg, _ = chan.recv()
            except transport.Refused as exc:
                refused = True
                raise AuthenticationError(f"the manager at {address} refused us: {exc.error}") from None
            if isinstance(msg, protocol.StatusReply):
                return msg.status
            if isinstance(msg, protocol.Error) and msg.code in (protocol.ErrorCode.AUTH, protocol.ErrorCode.UNKNOWN_PEER):
                refused = True
                raise AuthenticationError(f"the manager at {address} refused us: {msg.text}")
        return None
    finally:
        if not refused:  # answered or not: the manager forgets us now
            chan.send(protocol.Bye("status done"))
        chan.close()


def status(address: object = None, authkey: bytes | str | None = None) -> dict[str, Any]:
    """The ``dmp status --json`` object of the manager at ``address`` (else ``dmp.connect()``'s, else DMP_ADDRESS).

    Raises:
        ValueError: no address given and none configured, or an invalid one.
        ManagerUnavailableError: no manager answered within the connect timeout.
        AuthenticationError: the manager refused the authkey.
    """
    target = _config.resolve(address, authkey)
    if target.address is None:
        raise ValueError("dmp.status() needs a manager: pass address=, call dmp.connect() or set DMP_ADDRESS")
    found = fetch_status(target.address, target.authkey, _config.CONNECT_TIMEOUT_S)
    if found is None:
        raise ManagerUnavailableError(
            f"no dmp manager answered at {target.address} within {_config.CONNECT_TIMEOUT_S:g} s"
        )
    return found


def wait_for_workers(
    n: int, timeout: float | None = None, *, address: object = None, authkey: bytes | str | None = None
) -> dict[str, Any]:
    """Block until the cluster has at least ``n`` worker slots; returns the last status.

    A manager that does not answer yet is asked again until ``timeout``.

    Raises:
        ValueError: ``n`` is not a non-negative int, or no address is configured.
        dmp.TimeoutError: fewer than ``n`` slots after ``timeout`` seconds.
        AuthenticationError: the manager refused the authkey.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, not {n!r}")
    target = _config.resolve(address, authkey)
    if target.address is None:
        raise ValueError("wait_for_workers() needs a manager: pass address=, call dmp.connect() or set DMP_ADDRESS")
    deadline = None if timeout is None else time.monotonic() + timeout
    slots = None
    while True:
        left = _config.CONNECT_TIMEOUT_S if deadline is None else max(0.0, deadline - time.monotonic())
        found = fetch_status(target.address, target.authkey, min(left, 2.0) or 0.001)
        if found is not None:
            slots = found["slots"]
            if slots >= n:
                return found
        if deadline is not None and time.monotonic() >= deadline:
            seen = "no manager answered" if slots is None else f"the cluster has {slots}"
            raise TimeoutError(f"waited {timeout:g} s for {n} worker slots at {target.address}: {seen}")
        time.sleep(POLL_S)


_live: weakref.WeakSet[LocalCluster] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for cluster in list(_live):
        cluster.stop()


class LocalCluster:
    """A real manager daemon and ``nodes`` worker node daemons on loopback.

    ``processes`` is each node's worker processes (None: the CPU count).
    ``authkey`` None makes a fresh random key (loopback is shared with every
    local user). ``dashboard`` (``HOST:PORT``, port 0 for any free one) makes
    the manager serve its dashboard there; ``dashboard_url`` is then its URL.
    ``worker_memory_limit`` (bytes, or a text such as ``"2GiB"``) is each
    node's ``--worker-memory-limit``.

    Raises (from the constructor):
        ValueError: bad ``nodes``, ``processes`` or ``worker_memory_limit``.
        dmp.TimeoutError: the daemons did not all join within START_TIMEOUT_S.
        ManagerUnavailableError: the manager daemon exited at start (its log is quoted).
    """

    def __init__(
        self, nodes: int = 2, processes: int | None = None, *, authkey: bytes | str | None = None,
        dashboard: str | None = None, worker_memory_limit: int | str | None = None,
    ) -> None:
        for label, value in (("nodes", nodes), ("processes", processes)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{label} must be a positive int, not {value!r}")
        self.nodes = nodes
        self.processes = processes or _config.cpu_count()
        self.worker_memory_limit = 0 if worker_memory_limit is None else parse_size(worker_memory_limit)
        key = _config.authkey_from(authkey)
        self.authkey: bytes = key or secrets.token_hex(16).encode()
        self.address = ""
        self.dashboard_url: str | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self._dir = tempfile.mkdtemp(prefix="dmp-cluster-")
        self._keyfile = os.path.join(self._dir, "authkey")  # the directory is 0700, the file 0600
        with open(os.open(self._keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
            fh.write(self.authkey)
        self._env = dict(os.environ)
        for name in (_config.ENV_ADDRESS, _config.ENV_TOKEN, _config.ENV_AUTHKEY):
            self._env.pop(name, None)
        _live.add(self)
        try:
            self._start(dashboard)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        with open(os.path.join(self._dir, log), "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dmp", *args], env=self._env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def _log(self, name: str) -> str:
        try:
            with open(os.path.join(self._dir, name), errors="replace") as fh:
                return fh.read()[-2000:]
        except OSError:
            return ""

    def _start(self, dashboard: str | None) -> None:
        from dmp import discovery

        manager_file = os.path.join(self._dir, "manager.json")
        args = ["manager", "--bind", "tcp://127.0.0.1:0", "--manager-file", manager_file,
                "--authkey-file", self._keyfile]
        if dashboard is not None:
            args += ["--dashboard", dashboard]
        manager = self._spawn(*args, log="manager.log")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not os.path.exists(manager_file):
            if manager.poll() is not None:
                raise ManagerUnavailableError(f"the dmp manager exited with {manager.returncode}: {self._log('manager.log')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the dmp manager did not start within {START_TIMEOUT_S:g} s")
            time.sleep(POLL_S / 2)
        info = discovery.read_manager_file(manager_file)
        self.address = info["address"]
        self.dashboard_url = info.get("dashboard")
        memory = ["--worker-memory-limit", str(self.worker_memory_limit)] if self.worker_memory_limit else []
        for i in range(self.nodes):
            self._spawn("worker", "--manager-file", manager_file, "--authkey-file", self._keyfile,
                        "--processes", str(self.processes), *memory,
                        "--name", f"local-{i + 1}", log=f"node-{i + 1}.log")
        left = max(0.0, deadline - time.monotonic())
        try:
            wait_for_workers(self.nodes * self.processes, left, address=self.address, authkey=self.authkey)
        except TimeoutError as exc:
            logs = [self._log(f"node-{i + 1}.log") for i, p in enumerate(self.procs[1:]) if p.poll() is not None]
            raise TimeoutError(f"{exc}; node daemons that exited said: {logs or 'none'}") from None

    def stop(self) -> None:
        """Stop every daemon (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) and remove the files."""
        _live.discard(self)
        for proc in reversed(self.procs):  # nodes first, so they can say Bye
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT_S)
        shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def pids(self) -> list[int]:
        """Process ids of the manager and node daemons."""
        return [p.pid for p in self.procs]

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<dmp.LocalCluster {self.address} nodes={self.nodes} processes={self.processes}>"
