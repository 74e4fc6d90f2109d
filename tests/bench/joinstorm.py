"""A join storm: thousands of simulated workers say Hello to a real ``dmp manager`` at once.

    .venv/bin/python -m tests.bench.joinstorm                   # 5,000 workers on 100 nodes
    .venv/bin/python -m tests.bench.joinstorm --old-peer-rules  # peers re-Hello as before the fix

Nodes join first (as ``dmp worker`` daemons would), then every simulated
worker of each simulator process says Hello at once, through the real
handshake (``tests.bench.scalesim``), saying it again as ``dmp.wire.peer``
does. Reported: seconds until every worker joined, Hellos said (first ones
included), refusals received while joining (dropped handshakes), Welcomes
that answered a Hello already said again, and the manager's CPU over it all.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from tests.bench.scale import Cluster


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.joinstorm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=5000)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--procs", type=int, default=2, help="simulator processes (default %(default)s)")
    ap.add_argument("--wave", type=int, default=0, help="Hellos each simulator says at once (0: all)")
    ap.add_argument("--old-peer-rules", action="store_true",
                    help="re-Hello when unanswered for one beat, no jitter (before the fix)")
    ap.add_argument("--heartbeat-s", type=float, default=1.0, help="the manager's beat (default %(default)s)")
    ap.add_argument("--profile", help="file: the manager runs under cProfile, its stats there")
    args = ap.parse_args(argv)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    with tempfile.TemporaryDirectory(prefix="dmp-joinstorm-") as tmp:
        with Cluster(args.workers, args.nodes, args.procs, Path(tmp), args.profile, args.wave,
                     args.old_peer_rules, args.heartbeat_s) as cluster:
            joins = cluster.joins
            hellos = sum(j["hellos"] for j in joins)
            refusals = sum(j["refusals"] for j in joins)
            stale = sum(j["stale"] for j in joins)
            why: dict[str, int] = {}
            for j in joins:
                for text, n in j["why"].items():
                    why[text] = why.get(text, 0) + n
            sim_s = max(j["join_s"] for j in joins)
            wall, cpu = cluster.join["wall_s"], cluster.join["cpu_s"]
    print(f"{args.workers} workers on {args.nodes} nodes: all joined after {wall:.1f} s ({sim_s:.1f} s from the "
          f"workers' first Hellos); {hellos} Hellos said ({hellos - args.workers - args.nodes} again), "
          f"{refusals} refused while joining, {stale} stale Welcomes; manager CPU {cpu:.1f} s "
          f"({1e3 * cpu / args.workers:.2f} ms per worker)", flush=True)
    for text, n in sorted(why.items(), key=lambda kv: -kv[1]):
        print(f"  refused {n} times: {text}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
