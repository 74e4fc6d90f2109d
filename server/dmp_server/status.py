"""The daemon's status report: the object ``dmp status --json`` prints (see docs/cli.md)."""

from __future__ import annotations

import time
from typing import Any

from dmp.wire.protocol import Role
from dmp_server.peers import Peers
from dmp_server.scheduler import Scheduler


def report(address: str, started: float, peers: Peers, sched: Scheduler) -> dict[str, Any]:
    """Slots, load, nodes and clients as seen now; ``started`` is the daemon's time.time() at start."""
    # dmp's version is read on first use: importlib.metadata is heavy (dmp/__init__.py).
    from dmp import __version__ as version

    now = time.monotonic()
    nodes: dict[str, dict[str, Any]] = {}
    for peer in peers.by_id.values():
        if peer.role == Role.NODE:
            nodes[peer.name] = {
                "name": peer.name, "host": peer.host, "slots": 0, "busy": 0,
                "tasks_done": 0, "last_heartbeat_s": round(now - peer.last_seen, 3), "version": peer.version,
            }
    for w in sched.workers.values():
        node = nodes.setdefault(w.node, {
            "name": w.node, "host": "", "slots": 0, "busy": 0, "tasks_done": 0, "last_heartbeat_s": 0.0,
        })
        node["slots"] += 1
        node["busy"] += 1 if w.assigned else 0
        node["tasks_done"] += w.done
    for name, entry in nodes.items():
        declared = sched.nodes.get(name)
        if declared is not None and declared.total:  # dmp worker --resources
            entry["resources"] = dict(declared.total)
            entry["resources_free"] = dict(declared.free)
    clients = []
    for c in sched.clients.values():
        cpeer = peers.by_id.get(c.peer)
        clients.append({
            "id": c.peer, "name": cpeer.name if cpeer else "local", "host": cpeer.host if cpeer else "local",
            "queued": c.queued, "running": c.running, "done": c.done, "failed": c.failed, "retried": c.retried,
            "workers": len(c.on), "max_workers": c.max_workers,
        })
    return {
        "manager": {"address": address, "version": version, "uptime_s": round(time.time() - started, 1)},
        "slots": len(sched.workers),
        "busy": sched.busy_workers(),
        "queued": sched.queued(),
        "totals": {"done": sched.totals.done, "failed": sched.totals.failed, "retried": sched.totals.retried,
                   "workers_lost": sched.totals.workers_lost, "last_worker_lost": sched.totals.last_lost},
        "nodes": list(nodes.values()),
        "clients": clients,
    }
