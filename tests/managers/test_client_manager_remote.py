"""Issue 10: a manager the client starts itself, used by a Process running on a cluster node.

A client script (connected by DMP_ADDRESS, through a recording relay: tests/relay.py)
starts a SyncManager and a BaseManager with a registered type, and a remote Process
uses a dict proxy and a registered-type proxy. Real daemons (tests/daemons.py).

    keyless cluster (loopback only): the managers' random keys and the caller's
        current_process().authkey travel in the Process payload; it works
    keyed cluster, no CURVE: the managers get the cluster's key by default; only
        the marker "use your cluster key" travels; it works
    keyed cluster, a manager with a key of its own: the key stays home (never on
        the wire, checked in the relay's bytes) and the child's AuthenticationError
        names DMP_AUTHKEY
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import Daemons
from tests.managers.conftest import run_script
from tests.relay import relay

pytestmark = pytest.mark.timeout(180)

SCRIPT = r'''
import os
from dmp import Process, current_process
from dmp.managers import BaseManager, SyncManager

class Counter:
    def __init__(self):
        self.n = 0
    def add(self, k):
        self.n += k
        return self.n

class Mine(BaseManager):
    pass

Mine.register("Counter", Counter)

def child(d, counter):
    d["seen"] = counter.add(5)
    d["authkey"] = bytes(current_process().authkey).hex()

if __name__ == "__main__":
    authkey = os.environ.get("MGR_AUTHKEY", "").encode() or None
    sync = SyncManager(authkey=authkey)
    sync.start()
    mine = Mine(authkey=authkey)
    mine.start()
    print("addresses", sync.address, mine.address)
    print("keys", sync._authkey.hex(), mine._authkey.hex(), bytes(current_process().authkey).hex())
    d = sync.dict()
    counter = mine.Counter()
    p = Process(target=child, args=(d, counter))
    p.start()
    p.join(60)
    print("exitcode", p.exitcode)
    if p.exitcode == 0:
        print("seen", d["seen"], counter.add(0))
        print("same authkey", d["authkey"] == bytes(current_process().authkey).hex())
    if os.environ.get("POOL_TOO"):  # a pool task gets no keys: the node's own must open the manager
        from dmp import Pool
        with Pool(1) as pool:
            print("pool", pool.apply(child, (d, counter)), d["seen"])
    sync.shutdown()
    mine.shutdown()
'''


def run_client(
    cluster: Daemons, tmp_path: Path, manager_key: str = "", pool_too: bool = False
) -> tuple[dict[str, list[str]], str, bytes]:
    """Run SCRIPT against ``cluster`` through a relay: (its printed lines by first word, stderr, bytes sent)."""
    with relay(cluster.address) as r:
        env = {**cluster.env, "DMP_ADDRESS": r.address}
        if pool_too:
            env["POOL_TOO"] = "1"
        if manager_key:
            env["MGR_AUTHKEY"] = manager_key
        proc = run_script(SCRIPT, env, timeout=120)
        sent = r.sent()
    assert "exitcode" in proc.stdout, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n{cluster.logs()}"
    lines = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line.strip()}
    assert sent, "the relay saw nothing: the client did not go through it"
    return lines, proc.stderr, sent


@pytest.fixture(scope="module")
def keyed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemons]:
    d = Daemons(tmp_path_factory.mktemp("keyed"), authkey=secrets.token_hex(16).encode())
    d.start(nodes=1, processes=1)
    try:
        yield d
    finally:
        d.stop()


def test_keyless_cluster_remote_process_uses_the_clients_managers(tmp_path: Path) -> None:
    cluster = Daemons(tmp_path / "keyless").start(nodes=1, processes=1)
    try:
        lines, stderr, sent = run_client(cluster, tmp_path)
    finally:
        cluster.stop()
    assert lines["exitcode"] == ["0"], stderr
    assert lines["seen"] == ["5", "5"]
    assert lines["same"] == ["authkey", "True"]
    # tcp on the interface that reaches the cluster (loopback here), not ipc://
    assert all(a.startswith("tcp://127.0.0.1:") for a in lines["addresses"]), lines["addresses"]
    # The rule ships them on a keyless (loopback-only) cluster: the relay saw them go.
    for key in lines["keys"]:
        assert bytes.fromhex(key) in sent


def test_keyed_cluster_managers_share_the_cluster_key(keyed_cluster: Daemons, tmp_path: Path) -> None:
    lines, stderr, sent = run_client(keyed_cluster, tmp_path, pool_too=True)
    assert lines["exitcode"] == ["0"], stderr
    assert lines["seen"] == ["5", "5"]
    assert lines["pool"] == ["None", "10"], stderr  # a pool task too: the node's key opens them
    assert lines["same"] == ["authkey", "False"]  # signed, not encrypted: the process key stays home
    assert keyed_cluster.authkey is not None
    sync_key, mine_key, process_key = (bytes.fromhex(k) for k in lines["keys"])
    assert sync_key == mine_key == keyed_cluster.authkey
    assert keyed_cluster.authkey not in sent
    assert process_key not in sent


def test_keyed_cluster_withholds_a_managers_own_key(keyed_cluster: Daemons, tmp_path: Path) -> None:
    own = secrets.token_hex(16)
    lines, stderr, sent = run_client(keyed_cluster, tmp_path, manager_key=own)
    assert lines["exitcode"] == ["1"]
    assert "AuthenticationError" in stderr, stderr
    assert "DMP_AUTHKEY" in stderr and "CURVE" in stderr, stderr
    assert own.encode() not in sent
    assert bytes.fromhex(lines["keys"][2]) not in sent  # nor the caller's current_process().authkey


def test_curve_cluster_ships_a_managers_own_key_encrypted(tmp_path: Path) -> None:
    # Under CURVE the client's managers serve with key pairs of their own (they have
    # no cluster secret), and a key of their own may travel: the link is encrypted.
    keys = tmp_path / "curve"
    cluster = Daemons(tmp_path / "logs", authkey=b"curve and key", manager_args=("--curve", str(keys)))
    try:
        cluster.start(nodes=0)
        cluster.spawn("worker", cluster.address, "--processes", "1", "--name", "enc", "--curve", str(keys))
        cluster.env = {**cluster.env, "DMP_CURVE": str(keys)}
        own = secrets.token_hex(16)
        lines, stderr, sent = run_client(cluster, tmp_path, manager_key=own)
    finally:
        cluster.stop()
    assert lines["exitcode"] == ["0"], stderr
    assert lines["seen"] == ["5", "5"]
    assert lines["same"] == ["authkey", "True"]
    assert own.encode() not in sent  # it went, but encrypted
    assert bytes.fromhex(lines["keys"][2]) not in sent


STARTER = r'''
import sys
from dmp.managers import SyncManager
m = SyncManager()  # started in cluster mode (DMP_ADDRESS) under CURVE (DMP_CURVE): a key pair of its own
m.start()
m.dict({"from": "the starter"})  # what the other program's manager will hold too
print(m.address, m.curve_public_key, flush=True)
sys.stdin.readline()
m.shutdown()
'''

CONNECTER = r'''
import sys
from dmp.managers import SyncManager
from dmp.errors import ManagerUnavailableError
address, key, public = sys.argv[1], sys.argv[2].encode(), sys.argv[3] or None
m = SyncManager(address=address, authkey=key, curve_public_key=public)
try:
    m.connect()
except ManagerUnavailableError as exc:
    print("unavailable", exc)
    raise SystemExit(0)
d = m.dict()
d["x"] = 41
print("connected", d["x"] + 1)
'''


def test_curve_connect_to_a_started_manager_takes_its_public_key(tmp_path: Path) -> None:
    """Another program connects to a manager a client started under CURVE: with the
    started manager's ``curve_public_key`` it works; without, the error names it."""
    keys = tmp_path / "curve"
    cluster = Daemons(tmp_path / "logs", authkey=b"curve and key", manager_args=("--curve", str(keys)))
    try:
        cluster.start(nodes=0)
        env = {**cluster.env, "DMP_CURVE": str(keys), "DMP_ADDRESS": cluster.address}
        starter = subprocess.Popen([sys.executable, "-c", STARTER], env=env, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        try:
            assert starter.stdout is not None and starter.stdin is not None
            address, public = starter.stdout.readline().split()
            assert len(public) == 40
            args = [address, "curve and key"]
            other = {k: v for k, v in env.items() if k != "DMP_ADDRESS"}  # any program, with the cluster's keys
            with_key = subprocess.run([sys.executable, "-c", CONNECTER, *args, public], env=other,
                                      capture_output=True, text=True, timeout=60)
            without = subprocess.run([sys.executable, "-c", CONNECTER, *args, ""], env=other,
                                     capture_output=True, text=True, timeout=60)
            starter.stdin.write("done\n")
            starter.stdin.close()
            starter.wait(30)
        finally:
            if starter.poll() is None:
                starter.kill()
                starter.wait(10)
    finally:
        cluster.stop()
    assert with_key.stdout.split() == ["connected", "42"], with_key.stderr
    assert without.stdout.startswith("unavailable"), without.stdout + without.stderr
    assert "curve_public_key" in without.stdout and "DMP_CURVE" in without.stdout, without.stdout
