"""A join storm: hundreds of workers say Hello to a real manager at once, and all join.

Simulated workers (``tests.bench.scalesim``: real sockets, the real signed
handshake, re-Hellos as ``dmp.wire.peer`` says them) from two processes,
every socket connected first and then every Hello sent back to back. Asserts
counts only (how many joined, how often each said Hello), never time: the
suite passes with a CPU burner beside it (a slow manager makes a backlog,
which it must not blame on the peers).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.scale import Cluster

WORKERS = 1000
NODES = 20
MOST_HELLOS = 3  # K: no worker's handshake is dropped more than twice


@pytest.mark.timeout(240)
def test_a_thousand_workers_joining_at_once_all_join(tmp_path: Path) -> None:
    with Cluster(WORKERS, NODES, 2, tmp_path, wave=0) as cluster:  # entering waits for every worker to join
        cluster.check()  # every simulator alive, every worker still joined
        joins = cluster.joins
    assert len(joins) == 2
    most = max(j["most"] for j in joins)
    refusals = sum(j["refusals"] for j in joins)
    hellos = sum(j["hellos"] for j in joins)
    assert most <= MOST_HELLOS, f"a peer said Hello {most} times; refusals {[j['why'] for j in joins]}"
    assert hellos <= WORKERS + NODES + refusals + WORKERS // 10, f"{hellos} Hellos for {WORKERS + NODES} peers"
