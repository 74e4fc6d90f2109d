"""One harness for every suite's daemons: start `dmp manager` / `dmp worker` on loopback, kill them by PID.

    Daemons(logdir)
      manager   dmp manager --bind tcp://127.0.0.1:0   port read back from its log line
                                                      "manager listening on ENDPOINT" (no check-then-bind race)
      nodes     dmp worker ADDRESS --name NAME         (FAULT_NODE=NAME in their environment)
    every daemon runs in a session (process group) of its own, logs to a file under
    ``logdir`` (never an unread pipe), and is remembered in a process-wide registry:
    ``stop()`` SIGTERMs, then SIGKILLs each group; ``kill_leftovers()`` (a session
    finalizer in tests/conftest.py) kills any group a test failed to stop.

Starting is all-or-nothing: ``start_cluster`` stops what it started when any step
(the manager never listening, the slots never joining) raises.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from dmp.cli import fetch_status

ROOT = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(rb"manager listening on (\S+)")
# Every daemon group this process started and has not yet reaped: pid -> Popen.
_LIVE: dict[int, subprocess.Popen[bytes]] = {}
_LIVE_LOCK = threading.Lock()
# How long a daemon gets to exit after SIGTERM before its group is SIGKILLed. Generous,
# because a loaded 2-core machine can take seconds to schedule a clean shutdown.
TERM_GRACE_S = 8.0


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``cond`` until it returns something truthy and return that.

    Raises:
        AssertionError: ``timeout`` seconds passed first (names ``what`` and the last value).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {value!r})")
        time.sleep(every)


def forget_address(address: str) -> None:
    """A manager just came up on a port the kernel picked: what this process
    remembers of an earlier manager at that address (a test before, in this
    pytest worker, whose daemon had the same port) is stale: its authkey and
    CURVE key, which the client would otherwise use and be refused with (dmp
    never downgrades a remembered key), and its connection."""
    from dmp import _config
    from dmp.client import proxylink
    from dmp.wire import transport

    proxylink.forget(address)
    proxylink._keys.pop(address, None)
    with _config._lock:
        _config._known_keys.pop(address, None)
    transport._server_keys.pop(address, None)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (empty once it is gone)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def base_env(authkey: bytes | None = None) -> dict[str, str]:
    """This environment without any DMP_* setting, dmp importable, and ``authkey`` as DMP_AUTHKEY."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMP_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "server"), env.get("PYTHONPATH", "")])
    if authkey:
        env["DMP_AUTHKEY"] = authkey.decode()
    return env


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def kill_leftovers(only: Iterable[int] | None = None) -> list[int]:
    """SIGKILL the group of every daemon still registered (or of those in ``only``); returns their pids."""
    with _LIVE_LOCK:
        wanted = set(_LIVE) if only is None else set(only) & set(_LIVE)
        procs = [_LIVE.pop(pid) for pid in wanted]
    for proc in procs:
        _kill_group(proc.pid, signal.SIGCONT)
        _kill_group(proc.pid, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    return [p.pid for p in procs]


@contextlib.contextmanager
def unused_address() -> Iterator[str]:
    """A loopback tcp:// address where nothing listens, held (bound, never listening) meanwhile."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"tcp://127.0.0.1:{s.getsockname()[1]}"


class Daemons:
    """A manager and named worker nodes on loopback, every process tracked by PID and group."""

    def __init__(
        self, logdir: Path | None = None, *, authkey: bytes | None = None, address: str | None = None,
        manager_args: tuple[str, ...] = (),
    ) -> None:
        self._own_logdir = logdir is None  # made here: removed by stop()
        self.logdir = logdir if logdir is not None else Path(tempfile.mkdtemp(prefix="dmp-daemons-"))
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.authkey = authkey
        self.address = address or ""  # known once the manager listens (or given: a node-only harness)
        self.manager_args = list(manager_args)
        self.env = base_env(authkey)
        self.manager: subprocess.Popen[bytes] | None = None
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.processes: dict[str, int] = {}
        self.procs: list[subprocess.Popen[bytes]] = []  # everything ever started, in order
        self.workers_seen: set[int] = set()  # worker pids ever seen, swept in stop()
        self._lock = threading.Lock()

    # --- starting ---------------------------------------------------------------------

    def spawn(
        self, *args: str, name: str | None = None, env: dict[str, str] | None = None, wrap: tuple[str, ...] = ()
    ) -> subprocess.Popen[bytes]:
        """Run ``python -m dmp ARGS`` in its own process group, logging to ``logdir/NAME.log``.

        ``wrap``: a command that runs first and execs its arguments (say, one that
        puts itself into a cgroup); the process started is still the daemon's.
        """
        log_name = name or args[0]
        with open(self.logdir / f"{log_name}.log", "ab") as log:
            proc = subprocess.Popen(
                [*wrap, sys.executable, "-m", "dmp", *args], env=env or self.env, cwd=ROOT,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        with self._lock:
            self.procs.append(proc)
        with _LIVE_LOCK:
            _LIVE[proc.pid] = proc
        return proc

    def start_manager(self, timeout: float = 30.0) -> subprocess.Popen[bytes]:
        """Start the manager (on port 0 the first time, on the same address after) and wait until it listens.

        Raises:
            AssertionError: it exited or did not listen within ``timeout`` (its log is in the message).
        """
        log = self.logdir / "manager.log"
        offset = log.stat().st_size if log.exists() else 0
        self.manager = proc = self.spawn(
            "manager", "--bind", self.address or "tcp://127.0.0.1:0", *self.manager_args, name="manager"
        )

        def listening() -> str | None:
            with open(log, "rb") as fh:
                fh.seek(offset)
                m = _LISTENING.search(fh.read())
            if m:
                return m.group(1).decode()
            if proc.poll() is not None:
                raise AssertionError(f"the manager exited with {proc.returncode}:\n{self.logs()}")
            return None

        fresh = self.address is None
        try:
            self.address = wait_for(listening, timeout, "the manager to listen")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None
        if fresh:
            forget_address(self.address)
        return proc

    def start_node(
        self, name: str, processes: int = 2, *extra: str, wrap: tuple[str, ...] = ()
    ) -> subprocess.Popen[bytes]:
        """Start ``dmp worker`` node ``name`` (FAULT_NODE=name) joined to ``self.address`` (``wrap``: see spawn)."""
        env = dict(self.env, FAULT_NODE=name)
        proc = self.spawn("worker", self.address, "--processes", str(processes), "--name", name, *extra,
                          name=name, env=env, wrap=wrap)
        self.nodes[name] = proc
        self.processes[name] = processes
        return proc

    def worker(self, name: str, processes: int = 2) -> subprocess.Popen[bytes]:
        """Alias of ``start_node`` for the cluster suite."""
        return self.start_node(name, processes)

    def start(self, nodes: int = 2, processes: int = 2) -> Daemons:
        """Manager and ``nodes`` nodes, every slot joined; on any failure everything is stopped."""
        try:
            self.start_manager()
            for i in range(nodes):
                self.start_node(f"node{i + 1}", processes)
            if nodes:
                self.wait_slots(nodes * processes)
        except BaseException:
            sys.stderr.write(self.logs())
            self.stop()
            raise
        return self

    def restart_manager(self) -> subprocess.Popen[bytes]:
        """SIGTERM the manager, wait for it, and start a new one on the same address."""
        if self.manager is not None and self.manager.poll() is None:
            self.manager.terminate()
            self.manager.wait(15)
        return self.start_manager()

    # --- looking -----------------------------------------------------------------------

    def status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        return fetch_status(self.address, self.authkey, timeout)

    def node_names(self) -> set[str]:
        status = self.status()
        return {n["name"] for n in status["nodes"]} if status else set()

    def node_slots(self, name: str) -> int:
        status = self.status()
        for n in status["nodes"] if status else []:
            if n["name"] == name:
                return int(n["slots"])
        return 0

    def wait_slots(self, n: int, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the manager counts at least ``n`` worker slots; returns its status.

        Raises:
            AssertionError: not within ``timeout`` seconds.
        """
        def enough() -> dict[str, Any] | None:
            status = self.status()
            return status if status is not None and status["slots"] >= n else None

        return wait_for(enough, timeout, f"{n} worker slots at {self.address}", every=0.1)  # type: ignore[no-any-return]

    def worker_pids(self, name: str) -> list[int]:
        pids = children(self.nodes[name].pid)
        self.workers_seen.update(pids)
        return pids

    def wait_workers(self, name: str, timeout: float = 30.0) -> list[int]:
        n = self.processes[name]

        def enough() -> list[int] | None:
            pids = self.worker_pids(name)
            return pids if len(pids) >= n else None

        return wait_for(enough, timeout, f"{n} workers of {name}")  # type: ignore[no-any-return]

    # --- hurting ---------------------------------------------------------------------------

    def signal_node(self, name: str, sig: int, *, workers: bool) -> list[int]:
        """Send ``sig`` to node ``name`` (and its workers); returns the worker pids."""
        proc = self.nodes[name]
        pids = self.worker_pids(name)
        os.kill(proc.pid, sig)
        if workers:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        if sig == signal.SIGKILL:
            proc.wait(10)
        return pids

    def kill_manager(self, sig: int = signal.SIGKILL) -> None:
        assert self.manager is not None
        self.manager.send_signal(sig)
        self.manager.wait(15)

    # --- stopping ----------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGCONT + SIGTERM every daemon, SIGKILL each group that lingers, then sweep stray workers."""
        with self._lock:
            procs = list(self.procs)
        for proc in procs:
            self.workers_seen.update(children(proc.pid))
        for proc in reversed(procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + TERM_GRACE_S
        for proc in reversed(procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        for proc in procs:  # the group: the daemon if it lingers, and whatever it forked
            _kill_group(proc.pid, signal.SIGCONT)
            _kill_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            with _LIVE_LOCK:
                _LIVE.pop(proc.pid, None)
        for pid in self.workers_seen:  # orphans that left their node's group
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
        if self._own_logdir:
            shutil.rmtree(self.logdir, ignore_errors=True)

    def logs(self) -> str:
        out = []
        for path in sorted(self.logdir.glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)


def start_cluster(
    logdir: Path | None = None, *, nodes: int = 2, processes: int = 2, authkey: bytes | None = None,
    manager_args: tuple[str, ...] = (),
) -> Daemons:
    """Start a manager and ``nodes`` nodes of ``processes`` workers; on failure print their logs and kill them.

    Raises:
        AssertionError: the manager never listened or the slots never joined (nothing is left running).
    """
    return Daemons(logdir, authkey=authkey, manager_args=manager_args).start(nodes, processes)
