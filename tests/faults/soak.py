"""Soak run (by hand, not in CI): Pool.imap over many tasks while chaos hurts the cluster.

    python tests/faults/soak.py [--tasks 1000000] [--minutes 10] [--nodes 3] [--processes 2]

    loopback manager + N nodes (harness.FaultCluster)
    main thread:   Pool(max_retries=...).imap(work, range(tasks)) -> every value checked in order
    chaos thread:  at random, SIGKILL a worker process, SIGKILL a node with its workers
                   (restarted a few seconds later), or freeze a node with SIGSTOP for 1-8 s
    each attempt:  work(i) appends "i" to a per-process log before returning i

At the end it reports tasks done, re-executions seen in the attempt logs, lost
(tasks never delivered: must be 0), doubled (tasks delivered twice at the wire:
must be 0), tasks failed with WorkerLostError, chaos events, and the manager's
peak RSS (VmHWM). Exit status 0 only if nothing was lost, doubled or stalled.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "server")]

import dmp  # noqa: E402
from dmp import protocol  # noqa: E402
from tests.faults.harness import FaultCluster, alive, peak_rss_kib  # noqa: E402

LOG_DIR = ""  # set in main(); captured by value with work()


def work(i: int) -> int:
    fd = getattr(os, "_soak_fd", None)
    if fd is None or fd[0] != os.getpid():
        fd = (os.getpid(), os.open(os.path.join(LOG_DIR, f"{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND))
        os._soak_fd = fd  # type: ignore[attr-defined]
    os.write(fd[1], b"%d\n" % i)
    return i


class Deliveries:
    """Counts each task's outcomes as they arrive at the client (a result seen twice is a double)."""

    def __init__(self, pool: Any, n: int) -> None:
        self.counts = bytearray(n)
        self.jobs: set[int] = set()
        session = pool._session
        inner = session.on_message
        apply_job = pool._apply_job

        def on_message(msg: protocol.Message, frames: list[Any]) -> None:
            if isinstance(msg, protocol.JobResults):
                for job, task_id, status, *_ in msg.items:
                    if job != apply_job and status != protocol.Status.CANCELLED and 0 <= task_id < n:
                        self.jobs.add(job)
                        if self.counts[task_id] < 255:
                            self.counts[task_id] += 1
            inner(msg, frames)

        session.on_message = on_message


class Chaos(threading.Thread):
    def __init__(self, cluster: FaultCluster, rng: random.Random, pace: float) -> None:
        super().__init__(name="chaos", daemon=True)
        self.cluster = cluster
        self.rng = rng
        self.pace = pace
        self.events: Counter[str] = Counter()
        self.down: dict[str, float] = {}  # node -> when to restart it
        self.frozen: dict[str, tuple[float, list[int]]] = {}  # node -> (when to thaw, pids)
        self.stop = threading.Event()

    def live(self) -> list[str]:
        return [n for n in self.cluster.nodes if n not in self.down and n not in self.frozen]

    def run(self) -> None:
        c, rng = self.cluster, self.rng
        while not self.stop.wait(rng.uniform(0.2, 2.0) * self.pace):
            now = time.monotonic()
            for name, when in list(self.down.items()):
                if now >= when:
                    c.start_node(name, c.processes[name])
                    del self.down[name]
                    self.events["node restarted"] += 1
            for name, (when, pids) in list(self.frozen.items()):
                if now >= when:
                    for pid in pids:
                        if alive(pid):
                            os.kill(pid, signal.SIGCONT)
                    del self.frozen[name]
                    self.events["node thawed"] += 1
            live = self.live()
            if not live:
                continue
            name = rng.choice(live)
            roll = rng.random()
            try:
                if roll < 0.6:
                    pids = c.worker_pids(name)
                    if pids:
                        os.kill(rng.choice(pids), signal.SIGKILL)
                        self.events["worker SIGKILLed"] += 1
                elif roll < 0.8 and len(live) > 1:
                    c.signal_node(name, signal.SIGKILL, workers=True)
                    self.down[name] = now + rng.uniform(1.0, 6.0)
                    self.events["node SIGKILLed"] += 1
                elif len(live) > 1:
                    pids = [c.nodes[name].pid, *c.worker_pids(name)]
                    for pid in pids:
                        os.kill(pid, signal.SIGSTOP)
                    seconds = rng.uniform(1.0, 8.0)
                    self.frozen[name] = (now + seconds, pids)
                    self.events["node frozen (SIGSTOP) >5 s" if seconds > 5 else "node frozen (SIGSTOP) <5 s"] += 1
            except ProcessLookupError:
                pass

    def heal(self) -> None:
        self.stop.set()
        self.join(10)
        for _, pids in self.frozen.values():
            for pid in pids:
                if alive(pid):
                    os.kill(pid, signal.SIGCONT)
        for name in self.down:
            self.cluster.start_node(name, self.cluster.processes[name])


def main(argv: list[str] | None = None) -> int:
    global LOG_DIR
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--processes", type=int, default=2, help="worker processes per node")
    ap.add_argument("--chunksize", type=int, default=1)
    ap.add_argument("--max-retries", type=int, default=50, help="Pool(max_retries=...) under heavy chaos")
    ap.add_argument("--pace", type=float, default=1.0, help="multiplies the 0.2-2 s pause between chaos events")
    ap.add_argument("--stall", type=float, default=120.0, help="seconds without the next result that count as a hang")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)

    workdir = Path(tempfile.mkdtemp(prefix="dmp-soak-"))
    LOG_DIR = str(workdir / "attempts")
    os.mkdir(LOG_DIR)
    cluster = FaultCluster(workdir / "daemons")
    cluster.start(args.nodes, args.processes)
    assert cluster.manager is not None
    chaos = Chaos(cluster, rng, args.pace)
    n = args.tasks
    done = failed = 0
    mismatched: list[tuple[int, Any]] = []
    stalled = None
    deadline = time.monotonic() + args.minutes * 60
    t0 = time.monotonic()
    peak = 0
    print(f"soak: {n} tasks, {args.minutes:g} min, {args.nodes} nodes x {args.processes}, seed {seed}, in {workdir}",
          flush=True)
    try:
        pool = dmp.Pool(address=cluster.address, max_retries=args.max_retries)
        deliveries = Deliveries(pool, -(-n // args.chunksize))
        it = pool.imap(work, range(n), chunksize=args.chunksize)
        chaos.start()
        next_report = t0 + 15
        while done + failed < n and time.monotonic() < deadline:
            try:
                value = it.next(args.stall) if args.chunksize == 1 else next(it)
            except dmp.TimeoutError:
                stalled = done + failed
                break
            except StopIteration:
                break
            except dmp.WorkerLostError as exc:
                failed += 1
                print(f"  task {done + failed - 1} failed: {exc}", flush=True)
                continue
            if value != done + failed:
                mismatched.append((done + failed, value))
            done += 1
            now = time.monotonic()
            if now >= next_report:
                next_report = now + 15
                peak = max(peak, peak_rss_kib(cluster.manager.pid))
                print(f"  {now - t0:6.0f} s  {done} done  {done / (now - t0):.0f}/s  chaos {dict(chaos.events)}",
                      flush=True)
        elapsed = time.monotonic() - t0
        chaos.heal()
        peak = max(peak, peak_rss_kib(cluster.manager.pid))
        time.sleep(2.0)  # late results of lost incarnations arrive now, if ever
        consumed = done + failed
        chunks_consumed = -(-consumed // args.chunksize)
        counts = deliveries.counts
        lost = sum(1 for t in range(chunks_consumed) if counts[t] == 0)
        doubled = sum(1 for c in counts if c > 1)
        pool.terminate()
        attempts = bytearray(n)
        for path in Path(LOG_DIR).glob("*.log"):
            for line in path.read_bytes().split():
                i = int(line)
                if attempts[i] < 255:
                    attempts[i] += 1
        reexec = sum(a - 1 for a in attempts[:consumed] if a > 1)
        reexec_tasks = sum(1 for a in attempts[:consumed] if a > 1)
        with dmp.Pool(address=cluster.address) as after:
            serving = after.map(abs, range(-50, 50)) == [abs(x) for x in range(-50, 50)]
    finally:
        chaos.stop.set()
        cluster.stop()
    print("\nsoak report")
    print(f"  seed                 {seed}")
    print(f"  cluster              manager + {args.nodes} nodes x {args.processes} worker processes (loopback)")
    print(f"  tasks done           {done} of {n} in {elapsed:.0f} s ({done / elapsed:.0f}/s, chunksize {args.chunksize})")
    print(f"  failed (WorkerLost)  {failed} (max_retries {args.max_retries})")
    print(f"  re-executions        {reexec} extra runs of {reexec_tasks} tasks (attempt logs)")
    print(f"  lost                 {lost}  (must be 0)")
    print(f"  doubled              {doubled}  (must be 0)")
    print(f"  out of order/wrong   {len(mismatched)} {mismatched[:5]}")
    print(f"  stalled              {'no' if stalled is None else f'yes, at task {stalled}'}")
    print(f"  chaos                {dict(chaos.events)}")
    print(f"  manager peak RSS     {peak / 1024:.1f} MiB (VmHWM)")
    print(f"  serving afterwards   {serving}")
    ok = lost == 0 and doubled == 0 and not mismatched and stalled is None and serving
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
