"""Floods and honest mistakes (issue 11, items 10 and 11).

100,000 unauthenticated messages cost the manager a few log lines and no
lasting memory, and a Pool.map completes while they arrive; a client, node
or worker without the key, or with a wrong one, is told so at once and
stops instead of re-saying Hello forever.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import zmq

import dmp
from dmp.wire import protocol
from tests.faults import tasks
from tests.faults.harness import FaultCluster, wait_for

from .attacker import raw_dealer
from .conftest import KEY, start

pytestmark = pytest.mark.timeout(180)

FLOOD = 100_000
SOCKETS = 4


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_10_a_flood_of_strangers_costs_bounded_log_and_memory(cluster: FaultCluster) -> None:
    assert cluster.manager is not None
    pid = cluster.manager.pid
    log = cluster.logdir / "manager.log"
    with dmp.Pool(address=cluster.address, authkey=KEY) as pool:
        assert pool.map(tasks.square, range(4)) == [0, 1, 4, 9]  # warm: the baseline includes a served pool
        baseline_rss = _rss_kib(pid)
        baseline_log = log.stat().st_size
        hello = protocol.encode(protocol.Hello("worker", "phantom", "h", 1, node="node1"))
        kinds = [[b"", hello], [os.urandom(40), hello], [b"junk"], [bytes(40), b"\x93\x02\x03\x90", b"x" * 256]]
        ctx: zmq.Context[Any] = zmq.Context()
        sent = [0]

        def flood(sock: zmq.Socket[Any]) -> None:
            for i in range(FLOOD // SOCKETS):
                sock.send_multipart(kinds[i % len(kinds)])
            sent[0] += FLOOD // SOCKETS

        try:
            socks = [raw_dealer(ctx, cluster.address) for _ in range(SOCKETS)]
            floods = [threading.Thread(target=flood, args=(s,), daemon=True) for s in socks]
            for t in floods:
                t.start()
            # Served during the flood.
            assert pool.map(tasks.square, range(200), chunksize=5) == [i * i for i in range(200)]
            for t in floods:
                t.join(120)
            assert sent[0] == FLOOD
            # Everything sent was read: the manager answers a status request behind it.
            wait_for(lambda: cluster.status(timeout=5.0), 60, "the manager to answer after the flood")
        finally:
            ctx.destroy(linger=0)
        assert pool.map(tasks.square, range(20)) == [i * i for i in range(20)]
    grown = log.stat().st_size - baseline_log
    assert grown < 32 * 1024, f"the flood wrote {grown} bytes of log"
    assert cluster.manager.poll() is None
    # Memory the flood took is handed back (within a refusal interval or two).
    wait_for(lambda: _rss_kib(pid) < baseline_rss + 64 * 1024, 60, "the manager's memory to come back")


def test_11_a_client_without_the_key_is_told_the_manager_requires_one(
    cluster: FaultCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DMP_AUTHKEY", raising=False)
    with pytest.raises(dmp.AuthenticationError, match="requires an authkey"):
        dmp.Pool(address=cluster.address)
    with pytest.raises(dmp.AuthenticationError, match="does not match"):
        dmp.Pool(address=cluster.address, authkey=b"not the key")


@pytest.mark.parametrize("key", [None, b"a wrong key"], ids=["no-key", "wrong-key"])
def test_11_a_node_with_a_wrong_or_no_key_exits_3_without_flooding(cluster: FaultCluster, tmp_path: Path, key: bytes | None) -> None:
    bad = FaultCluster(tmp_path / "bad", authkey=key)
    bad.address = cluster.address
    try:
        proc = bad.start_node("misconfigured", processes=2)
        assert proc.wait(60) == 3
    finally:
        bad.stop()
    assert (tmp_path / "bad" / "misconfigured.log").stat().st_size < 8 * 1024
    status = cluster.status()
    assert status is not None and status["slots"] == 2 and "misconfigured" not in str(status)


def test_11_a_status_probe_that_says_bye_leaves_at_once(tmp_path: Path) -> None:
    # Beats of 60 s: a probe that lingered would be expired only minutes later,
    # past this test's timeout; its "left" line can only come from its Bye.
    c = start(tmp_path / "daemons", nodes=0, manager_args=("--heartbeat-s", "60", "--log-level", "debug"))
    try:
        done = subprocess.run([sys.executable, "-m", "dmp", "status", c.address, "--json"], env=c.env,
                              capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        log = tmp_path / "daemons" / "manager.log"
        wait_for(lambda: re.search(rb"status \S+ on \S+ left", log.read_bytes()), 60, "the status probe to leave")
        assert b"went silent" not in log.read_bytes()
    finally:
        c.stop()
