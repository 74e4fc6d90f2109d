"""Loopback daemons for fault injection, owned by PID: start, kill, freeze, restart, sweep.

    FaultCluster
      manager   dmp manager --bind tcp://127.0.0.1:PORT     (one Popen; restartable)
      nodes     dmp worker ADDRESS --name NAME               (Popen each; FAULT_NODE=NAME)
        workers forked by each node: found through /proc/PID/task/PID/children,
        remembered, and killed by PID in stop() even if their node died first

Every daemon logs to a file under ``logdir`` (never an unread pipe, which
would block a chatty daemon once the pipe buffer fills).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dmp.cli import fetch_status
from dmp.wire import protocol
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
# The manager declares a peer gone after LIVENESS (4) silent heartbeats,
# checked once per heartbeat: at most 5 s after its last beat by default
# (measured 4.8-4.9 s). The tests allow 2 s more for their own status
# polling, which is slow on a loaded 2-core CI machine.
LOSS_BOUND_S = 7.0


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``cond`` until it returns something truthy; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {value!r})")
        time.sleep(every)


def children(pid: int) -> list[int]:
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


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set) of ``pid`` in KiB, 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def base_env(authkey: bytes | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMP_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "server"), env.get("PYTHONPATH", "")])
    if authkey:
        env["DMP_AUTHKEY"] = authkey.decode()
    return env


class FaultCluster:
    """A manager and named worker nodes on loopback, every process tracked by PID."""

    def __init__(
        self, logdir: Path, *, authkey: bytes | None = None, port: int | None = None, manager_args: tuple[str, ...] = ()
    ) -> None:
        self.manager_args = list(manager_args)
        self.logdir = logdir
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.authkey = authkey
        self.address = f"tcp://127.0.0.1:{port or free_port()}"
        self.env = base_env(authkey)
        self.manager: subprocess.Popen[bytes] | None = None
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.processes: dict[str, int] = {}
        self.procs: list[subprocess.Popen[bytes]] = []  # everything ever started
        self.workers_seen: set[int] = set()  # worker pids ever seen, swept in stop()
        self._lock = threading.Lock()

    # --- starting ---------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "ab")
        with log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dmp", *args], env=env or self.env, cwd=ROOT,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        with self._lock:
            self.procs.append(proc)
        return proc

    def start_manager(self) -> subprocess.Popen[bytes]:
        self.manager = self._spawn("manager", ["manager", "--bind", self.address, *self.manager_args])
        return self.manager

    def start_node(self, name: str, processes: int = 2, args: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        env = dict(self.env, FAULT_NODE=name)
        proc = self._spawn(name, ["worker", self.address, "--processes", str(processes), "--name", name, *args], env)
        self.nodes[name] = proc
        self.processes[name] = processes
        return proc

    def start(self, nodes: int = 2, processes: int = 2) -> FaultCluster:
        self.start_manager()
        for i in range(nodes):
            self.start_node(f"node{i + 1}", processes)
        self.wait_slots(nodes * processes)
        return self

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

    def wait_slots(self, n: int, timeout: float = 30.0) -> dict[str, Any]:
        def enough() -> dict[str, Any] | None:
            status = self.status()
            return status if status is not None and status["slots"] >= n else None

        return wait_for(enough, timeout, f"{n} worker slots at {self.address}", every=0.1)  # type: ignore[no-any-return]

    def worker_pids(self, name: str) -> list[int]:
        pids = children(self.nodes[name].pid)
        self.workers_seen.update(pids)
        return pids

    def wait_workers(self, name: str, timeout: float = 20.0) -> list[int]:
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
        """SIGCONT + SIGTERM everything we started, SIGKILL what lingers, then sweep workers."""
        with self._lock:
            procs = list(self.procs)
        for proc in procs:
            self.workers_seen.update(children(proc.pid))
        for proc in reversed(procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 8.0
        for proc in reversed(procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pid in self.workers_seen:  # orphans of nodes that were SIGKILLed
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)

    def logs(self) -> str:
        out = []
        for path in sorted(self.logdir.glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)


class DeliveryCounter:
    """Counts every task outcome the manager delivers to a pool, at the wire.

    Wraps the session's ``on_message`` so a result delivered twice is seen even
    when the result object would hide it (a finished job's sink is gone).
    """

    def __init__(self, pool: Any) -> None:
        self.counts: Counter[tuple[int, int]] = Counter()
        session = pool._session
        inner = session.on_message

        def on_message(msg: protocol.Message, frames: list[Any]) -> None:
            if isinstance(msg, protocol.Results):
                for job, task_id, status, *_ in msg.items:
                    if status != protocol.Status.CANCELLED:
                        self.counts[(job, task_id)] += 1
            inner(msg, frames)

        session.on_message = on_message

    def doubled(self) -> dict[tuple[int, int], int]:
        return {k: n for k, n in self.counts.items() if n > 1}


class OomKiller:
    """A stand-in for the kernel's OOM killer: SIGKILLs a registered pid past ``limit_mib`` resident.

    Tasks that mean to be OOM-killed write their pid into ``dir/oom-PID``
    and then allocate; this thread polls their VmRSS and kills them with
    SIGKILL, as the kernel (or a cgroup's memory limit) does.
    """

    def __init__(self, directory: Path, limit_mib: int = 200) -> None:
        self.dir = directory
        self.limit_kib = limit_mib * 1024
        self.killed: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oom-killer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            for path in self.dir.glob("oom-*"):
                pid = int(path.name.split("-", 1)[1])
                rss = 0
                try:
                    with open(f"/proc/{pid}/status") as fh:
                        rss = next((int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:")), 0)
                except OSError:
                    pass
                if rss > self.limit_kib:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        self.killed.append(pid)
                    path.unlink(missing_ok=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
