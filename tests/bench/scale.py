"""``python -m tests.bench.scale``: the real ``dmp manager`` against simulated nodes, workers and clients.

For each configuration a fresh manager daemon is started (``tests.daemons``,
with an authkey, so every message is signed and checked as in production);
simulated nodes and workers (``tests.bench.scalesim``, a few processes,
one socket per peer, the real protocol and handshakes) answer each task at
once with its real pickled result; simulated clients submit maps of tiny
tasks at chunksize 1 and at Pool.map's default chunksize (``len / (4 *
workers)``, as multiprocessing computes it) and check every result. The
manager's CPU time (user + system, from /proc/PID/stat) is read around
the run:

    workers nodes clients chunk  tasks  items/s  tasks/s  mgr CPU %  mgr µs/task  tasks/Dispatch

then, with ``--idle N``, the manager's CPU while N joined workers only
heartbeat. The simulators share the machine with the manager, so items/s is
a floor set by the slowest process; µs/task is the manager's own cost, and
tasks/Dispatch how many tasks each Dispatch carried (each also costs a
TaskDone and a JobResults per client in it): a count load blurs less.
Nothing is asserted; ``--quick`` runs one tiny configuration (the smoke test).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dmp import _config
from dmp.client.cluster import fetch_status
from tests.bench import scalesim
from tests.daemons import Daemons, wait_for

CLK_TCK = os.sysconf("SC_CLK_TCK")
STEP_TIMEOUT_S = 600.0


def cpu_seconds(pid: int) -> float:
    """CPU seconds process ``pid`` has run, all its threads (ZeroMQ's I/O thread too), children not.

    From /proc/PID/task/*/schedstat (nanoseconds; /proc/PID/stat counts
    10 ms ticks, too coarse for short runs); stat's user + system where
    schedstat is missing.
    """
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK


def default_chunksize(items: int, workers: int) -> int:
    """multiprocessing.Pool.map's default: ceil(items / (4 * workers))."""
    return max(1, math.ceil(items / (4 * workers)))


class Cluster:
    """A manager plus ``workers`` simulated workers over ``nodes`` nodes in ``procs`` processes."""

    def __init__(
        self, workers: int, nodes: int, procs: int, logdir: Path, profile: str | None = None,
        wave: int = scalesim.JOIN_WAVE, old_rules: bool = False, heartbeat_s: float = _config.HEARTBEAT_S,
    ) -> None:
        self.key = secrets.token_hex(16).encode()
        self.heartbeat_s = heartbeat_s  # the manager's --heartbeat-s, followed by the simulators
        self.daemons = Daemons(logdir, authkey=self.key, manager_args=("--heartbeat-s", f"{heartbeat_s:g}"))
        if profile:
            self.daemons.env["DMP_MANAGER_PROFILE"] = profile
        self.mp = multiprocessing.get_context("spawn")
        self.sims: list[tuple[Any, Any]] = []
        self.workers = workers
        self.nodes = nodes
        self.procs = max(1, min(procs, nodes))
        self.pid = 0
        self.rehellos = 0  # Hellos the simulated workers said again after joining (handshakes dropped)
        self.wave = wave  # workers each simulator says Hello for at once (0: all)
        self.old_rules = old_rules  # simulated peers say Hello again as before the join-storm fix
        self.joins: list[dict[str, Any]] = []  # each simulator's join: seconds, Hellos, refusals
        self.join = {"wall_s": 0.0, "cpu_s": 0.0}  # the manager's, from start to every worker joined

    def __enter__(self) -> Cluster:
        try:
            self.pid = self.daemons.start_manager().pid
            cpu0, t0 = cpu_seconds(self.pid), time.perf_counter()
            per_node = self.workers // self.nodes
            names = [f"simnode{i}" for i in range(self.nodes)]
            for p in range(self.procs):
                args = (names[p :: self.procs], per_node, self.wave, self.old_rules, self.heartbeat_s)
                self.sims.append(self._start(scalesim.serve_workers, *args))
            for ctl, _ in self.sims:
                got = _answer(ctl)
                if not isinstance(got, dict) or not got.get("ready"):
                    raise RuntimeError(f"a simulator said {got!r}, expected it ready")
                self.joins.append(got)
            wait_for(lambda: self._slots() >= per_node * self.nodes, 300, "every simulated worker to join")
            self.join = {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds(self.pid) - cpu0}
        except BaseException:
            self.__exit__()
            raise
        return self

    def _slots(self) -> int:
        status = fetch_status(self.daemons.address, self.key, 5.0)
        return int(status["slots"]) if status else 0

    def _start(self, target: Any, *args: Any) -> tuple[Any, Any]:
        ours, theirs = self.mp.Pipe()
        proc = self.mp.Process(target=target, args=(theirs, self.daemons.address, self.key, *args), daemon=True)
        proc.start()
        theirs.close()
        return ours, proc

    def dispatches(self) -> int:
        """Dispatches the simulated workers have answered so far."""
        total = 0
        for ctl, _ in self.sims:
            ctl.send("count")
            total += _answer(ctl)["dispatches"]
        return total

    def run_clients(self, clients: int, tasks: int, chunk: int) -> dict[str, float]:
        ctl, proc = self._start(scalesim.serve_clients, clients, tasks, chunk)
        try:
            _expect(ctl, "ready")
            sent0 = self.dispatches()
            cpu0, t0 = cpu_seconds(self.pid), time.perf_counter()
            ctl.send("go")
            got = _answer(ctl)
            cpu1, wall = cpu_seconds(self.pid), time.perf_counter() - t0
            dispatches = self.dispatches() - sent0
            self.check()
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        if got["bad"] or got["tasks"] != tasks:
            raise RuntimeError(f"{got['bad']} wrong results, {got['tasks']} of {tasks} tasks back")
        cpu = cpu1 - cpu0
        return {"tasks": tasks, "items": tasks * chunk, "wall_s": wall, "cpu_s": cpu,
                "items_per_s": tasks * chunk / wall, "tasks_per_s": tasks / wall,
                "cpu_pct": 100 * cpu / wall, "us_per_task": 1e6 * cpu / tasks,
                "tasks_per_dispatch": tasks / max(1, dispatches)}

    def idle_cpu(self, seconds: float) -> float:
        """Percent of one core the manager spends over ``seconds`` with nothing but heartbeats.

        Raises:
            RuntimeError: a simulator died or workers were dropped meanwhile (the number would lie).
        """
        cpu0, t0 = cpu_seconds(self.pid), time.perf_counter()
        time.sleep(seconds)
        pct = 100 * (cpu_seconds(self.pid) - cpu0) / (time.perf_counter() - t0)
        self.check()
        return pct

    def check(self) -> None:
        """Every simulator alive and every simulated worker still joined."""
        dead = [proc.pid for _, proc in self.sims if not proc.is_alive()]
        slots = self._slots()
        if dead or slots != self.workers // self.nodes * self.nodes:
            raise RuntimeError(f"simulators {dead} died; {slots} of {self.workers} workers joined")

    def __exit__(self, *exc: Any) -> None:
        for ctl, proc in self.sims:
            try:
                ctl.send("stop")
                if ctl.poll(10):
                    self.rehellos += ctl.recv().get("rehellos", 0)
            except (OSError, EOFError):
                pass
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.sims = []
        self.daemons.stop()


def _answer(ctl: Any) -> Any:
    if not ctl.poll(STEP_TIMEOUT_S):
        raise RuntimeError(f"a simulator did not answer within {STEP_TIMEOUT_S:g} s")
    return ctl.recv()


def _expect(ctl: Any, what: str) -> None:
    got = _answer(ctl)
    if got != what:
        raise RuntimeError(f"a simulator said {got!r}, expected {what!r}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="10x1,100x10,1000x100", help="WORKERSxNODES,... (default %(default)s)")
    ap.add_argument("--clients", default="1,20", help="client counts (default %(default)s)")
    ap.add_argument("--tasks", type=int, default=20000, help="tasks per chunksize=1 run (default %(default)s)")
    ap.add_argument("--items", type=int, default=400000, help="items per default-chunking run (default %(default)s)")
    ap.add_argument("--procs", type=int, default=2, help="processes simulating workers (default %(default)s)")
    ap.add_argument("--idle", type=int, default=5000, help="idle workers for the heartbeat row (0: none)")
    ap.add_argument("--idle-nodes", type=int, default=100, help="nodes those idle workers are on")
    ap.add_argument("--idle-s", type=float, default=10.0, help="seconds the idle CPU is measured over")
    ap.add_argument("--profile", help="directory: the manager runs under cProfile, stats to DIR/WORKERSxNODES.prof")
    ap.add_argument("--quick", action="store_true", help="one tiny configuration (the smoke test)")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes, args.clients, args.tasks, args.items = "4x2", "2", 300, 3000
        args.idle, args.idle_nodes, args.idle_s = 20, 2, 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the manager inherits it: a socket per peer
    rows: list[dict[str, Any]] = []
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    print(f"{'workers':>7} {'nodes':>5} {'clients':>7} {'chunk':>6} {'tasks':>7} {'items/s':>9} {'tasks/s':>8} "
          f"{'mgr CPU%':>8} {'mgr µs/task':>11} {'tasks/Dispatch':>14}", flush=True)
    with tempfile.TemporaryDirectory(prefix="dmp-scale-") as tmp:
        for shape in filter(None, args.shapes.split(",")):
            workers, nodes = (int(x) for x in shape.split("x"))
            profile = str(Path(args.profile).resolve() / f"{shape}.prof") if args.profile else None
            with Cluster(workers, nodes, args.procs, Path(tmp) / shape, profile) as cluster:
                for clients in (int(c) for c in args.clients.split(",")):
                    for chunk in (1, default_chunksize(args.items, workers)):
                        tasks = args.tasks if chunk == 1 else max(1, args.items // chunk)
                        row = cluster.run_clients(clients, tasks, chunk)
                        row.update(workers=workers, nodes=nodes, clients=clients, chunk=chunk)
                        rows.append(row)
                        print(f"{workers:>7} {nodes:>5} {clients:>7} {chunk:>6} {tasks:>7} {row['items_per_s']:>9.0f} "
                              f"{row['tasks_per_s']:>8.0f} {row['cpu_pct']:>8.1f} {row['us_per_task']:>11.1f} "
                              f"{row['tasks_per_dispatch']:>14.1f}", flush=True)
        if args.idle:
            profile = str(Path(args.profile).resolve() / "idle.prof") if args.profile else None
            with Cluster(args.idle, args.idle_nodes, args.procs, Path(tmp) / "idle", profile) as cluster:
                time.sleep(2.0)  # the join settles
                pct = cluster.idle_cpu(args.idle_s)
            rows.append({"idle_workers": args.idle, "nodes": args.idle_nodes, "cpu_pct": pct,
                         "rehellos": cluster.rehellos})
            print(f"idle: {args.idle} workers on {args.idle_nodes} nodes, heartbeats only: manager at {pct:.2f}% "
                  f"of one core ({pct / args.idle * 1000:.3f}% per 1000 workers; {cluster.rehellos} workers "
                  "said Hello again after joining)", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
