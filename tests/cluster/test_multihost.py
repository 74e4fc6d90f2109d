"""Cluster mode across real (namespaced) hosts: a manager host, two worker-node hosts, client hosts.

Every host is a Linux network namespace on a private bridge (see ``netns.py``);
the manager binds its host's bridge address (so an authkey is required), and
all client code runs as scripts inside client namespaces. Namespaces share
the hostname, so tasks tell which node ran them by ``DMP_TEST_NODE``, set
per node daemon (and inherited by its forked workers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .netns import Topology, make_topology

pytestmark = pytest.mark.netns

HOSTS = ("mgr", "nodeA", "nodeB", "client1", "client2")
NODES = ("nodeA", "nodeB")
PORT = 5555  # every topology has its own network: no port can collide
PY = sys.executable


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMP_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class NetCluster:
    topo: Topology
    dir: Path
    key: str
    address: str = ""
    manager: subprocess.Popen[Any] | None = None
    nodes: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)

    @property
    def keyfile(self) -> Path:
        return self.dir / "authkey"

    def _log(self, name: str) -> Any:
        return open(self.dir / f"{name}.log", "ab")

    def logs(self) -> str:
        out = []
        for path in sorted(self.dir.glob("*.log")):
            text = path.read_text(errors="replace")
            out.append(f"--- {path.name} (last 2000 chars)\n{text[-2000:]}")
        return "\n".join(out)

    def start_manager(self) -> None:
        self.address = f"tcp://{self.topo.ip('mgr')}:{PORT}"
        with self._log("manager") as log:
            self.manager = self.topo.spawn(
                "mgr", [PY, "-m", "dmp", "manager", "--bind", self.address, "--authkey-file", str(self.keyfile)],
                env=_base_env(), stdout=log, stderr=subprocess.STDOUT,
            )

    def start_node(self, host: str, processes: int = 2) -> subprocess.Popen[Any]:
        with self._log(host) as log:
            proc = self.topo.spawn(
                host,
                [PY, "-m", "dmp", "worker", self.address, "--processes", str(processes), "--name", host,
                 "--authkey-file", str(self.keyfile)],
                env=dict(_base_env(), DMP_TEST_NODE=host), stdout=log, stderr=subprocess.STDOUT,
            )
        self.nodes[host] = proc
        return proc

    def client_env(self, **extra: str) -> dict[str, str]:
        return dict(_base_env(), DMP_AUTHKEY=self.key, DMP_CLUSTER=self.address, **extra)

    def script(self, name: str, source: str) -> Path:
        path = self.dir / name
        path.write_text(textwrap.dedent(source))
        return path

    def python(self, host: str, script: Path, *args: str, timeout: float = 40.0,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.topo.run(host, [PY, str(script), *args], env=env or self.client_env(), timeout=timeout)

    def status(self, host: str = "client1") -> dict[str, Any]:
        out = self.topo.run(
            host, [PY, "-m", "dmp", "status", self.address, "--json", "--authkey-file", str(self.keyfile),
                   "--timeout", "5"],
            env=_base_env(), timeout=20,
        )
        assert out.returncode == 0, f"dmp status failed: {out.stderr}\n{self.logs()}"
        return dict(json.loads(out.stdout))

    def wait_nodes(self, want: dict[str, int], host: str = "client1", timeout: float = 20.0) -> dict[str, Any]:
        """Wait (polling from ``host``, in one process) until the manager lists exactly ``want`` {node: slots}."""
        code = textwrap.dedent(f"""
            import json, sys, time
            from dmp.cli import fetch_status
            want = {want!r}
            deadline = time.monotonic() + {timeout!r}
            status = None
            while time.monotonic() < deadline:
                status = fetch_status({self.address!r}, {self.key.encode()!r}, 2.0)
                if status is not None and {{n["name"]: n["slots"] for n in status["nodes"]}} == want:
                    print(json.dumps(status))
                    sys.exit(0)
                time.sleep(0.1)
            print(json.dumps(status))
            sys.exit(1)
        """)
        out = self.topo.run(host, [PY, "-c", code], env=_base_env(), timeout=timeout + 10)
        assert out.returncode == 0, f"cluster never showed nodes {want}: {out.stdout} {out.stderr}\n{self.logs()}"
        return dict(json.loads(out.stdout))


def start_net_cluster(tmp: Path) -> NetCluster:
    topo = make_topology(HOSTS)
    try:
        key = f"multihost-{os.getpid()}-{time.time_ns()}"
        cluster = NetCluster(topo, tmp, key)
        cluster.keyfile.write_text(key + "\n")
        cluster.keyfile.chmod(0o600)
        cluster.start_manager()
        for host in NODES:
            cluster.start_node(host)
        cluster.wait_nodes({host: 2 for host in NODES})
        return cluster
    except BaseException:
        topo.close()
        raise


def _teardown(c: NetCluster) -> None:
    c.topo.close()
    if c.topo.forced:
        warnings.warn(f"needed SIGKILL after 5 s of SIGTERM (a dmp shutdown hang?): {c.topo.forced}",
                      stacklevel=1)


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetCluster]:
    """One cluster for the tests that leave it as they found it."""
    c = start_net_cluster(tmp_path_factory.mktemp("multihost"))
    try:
        yield c
    finally:
        _teardown(c)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NetCluster]:
    """A fresh cluster for a test that breaks it."""
    c = start_net_cluster(tmp_path)
    try:
        yield c
    finally:
        _teardown(c)


# --- client scripts (each runs inside a client namespace) ---------------------------------------

MAP_SCRIPT = """
    import json, os, sys, time
    import dmp

    def where(x):
        time.sleep(0.01)
        return x * x, os.environ.get("DMP_TEST_NODE"), os.getpid()

    if __name__ == "__main__":
        with dmp.Pool(address=os.environ["DMP_CLUSTER"]) as pool:
            out = pool.map(where, range(100), chunksize=1)
        print(json.dumps({"values": [v for v, _, _ in out], "nodes": sorted({str(n) for _, n, _ in out}),
                          "pids": sorted({p for _, _, p in out}), "me": os.getpid()}))
"""


@pytest.mark.timeout(60)
def test_pool_map_from_a_client_host_spreads_over_both_nodes(shared_cluster: NetCluster) -> None:
    c = shared_cluster
    out = c.python("client1", c.script("map.py", MAP_SCRIPT))
    assert out.returncode == 0, f"{out.stderr}\n{c.logs()}"
    res = json.loads(out.stdout)
    assert res["values"] == [x * x for x in range(100)]
    assert res["nodes"] == ["nodeA", "nodeB"], res
    assert res["me"] not in res["pids"] and len(res["pids"]) >= 3, res


@pytest.mark.timeout(60)
def test_unchanged_stdlib_script_runs_under_dmp_address(shared_cluster: NetCluster) -> None:
    c = shared_cluster
    script = c.script("stdlib.py", """
        import os
        import time
        import dmp as multiprocessing

        def f(x):
            time.sleep(0.01)
            return x * x, os.environ.get("DMP_TEST_NODE")

        if __name__ == "__main__":
            with multiprocessing.Pool() as p:
                out = p.map(f, range(40))
            print([v for v, _ in out])
            print(" ".join(sorted({str(n) for _, n in out})))
    """)
    env = c.client_env(DMP_ADDRESS=c.address)
    del env["DMP_CLUSTER"]
    out = c.python("client2", script, env=env)
    assert out.returncode == 0, f"{out.stderr}\n{c.logs()}"
    lines = out.stdout.splitlines()
    assert lines[0] == str([x * x for x in range(40)])
    # Ran on the cluster's nodes, not in local workers (the client has no DMP_TEST_NODE).
    assert set(lines[1].split()) <= {"nodeA", "nodeB"} and lines[1], lines


@pytest.mark.timeout(60)
def test_lambda_and_closure_from_main_run_on_the_nodes(shared_cluster: NetCluster) -> None:
    c = shared_cluster
    script = c.script("lam.py", """
        import os
        import dmp

        if __name__ == "__main__":
            k = 10
            with dmp.Pool(address=os.environ["DMP_CLUSTER"]) as pool:
                print(pool.map(lambda x: x + k, [1, 2, 3]))
                print(pool.apply(lambda: os.environ.get("DMP_TEST_NODE")))
                try:
                    pool.apply(lambda: 1 / 0)
                except ZeroDivisionError as exc:
                    print("raised", type(exc).__name__, "ZeroDivisionError" in str(exc.__cause__))
    """)
    out = c.python("client1", script)
    assert out.returncode == 0, f"{out.stderr}\n{c.logs()}"
    assert out.stdout.splitlines() == ["[11, 12, 13]", out.stdout.splitlines()[1], "raised ZeroDivisionError True"]
    assert out.stdout.splitlines()[1] in ("nodeA", "nodeB")


@pytest.mark.timeout(60)
def test_two_clients_on_two_hosts_share_the_cluster_at_once(shared_cluster: NetCluster) -> None:
    c = shared_cluster
    barrier = c.dir / "barrier"
    barrier.mkdir(exist_ok=True)
    for f in barrier.iterdir():
        f.unlink()
    script = c.script("shared.py", """
        import json, os, sys, time
        import dmp

        def where(x):
            time.sleep(0.02)
            return x, os.environ.get("DMP_TEST_NODE")

        if __name__ == "__main__":
            me, other, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
            barrier = os.environ["BARRIER"]
            with dmp.Pool(address=os.environ["DMP_CLUSTER"]) as pool:
                pool.apply(int)  # connected
                open(os.path.join(barrier, me), "w").close()
                deadline = time.monotonic() + 20
                while not os.path.exists(os.path.join(barrier, other)):
                    assert time.monotonic() < deadline, "the other client never connected"
                    time.sleep(0.01)
                t0 = time.time()
                out = pool.map(where, range(n), chunksize=1)
                t1 = time.time()
            print(json.dumps({"ok": [x for x, _ in out] == list(range(n)),
                              "nodes": sorted({str(w) for _, w in out}), "t0": t0, "t1": t1}))
    """)
    env = c.client_env(BARRIER=str(barrier))
    procs = [
        c.topo.spawn(host, [PY, str(script), me, other, n], env=env, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
        for host, me, other, n in (("client1", "a", "b", "150"), ("client2", "b", "a", "100"))
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=45)
        assert proc.returncode == 0, f"{err}\n{c.logs()}"
        results.append(json.loads(out))
    assert all(r["ok"] for r in results), results
    assert max(r["t0"] for r in results) < min(r["t1"] for r in results), f"the maps did not overlap: {results}"
    assert {n for r in results for n in r["nodes"]} == {"nodeA", "nodeB"}, results


@pytest.mark.timeout(60)
def test_status_json_from_a_client_host_lists_both_nodes(shared_cluster: NetCluster) -> None:
    c = shared_cluster
    status = c.status("client2")
    assert status["manager"]["address"] == c.address
    assert status["slots"] == 4
    nodes = {n["name"]: n for n in status["nodes"]}
    assert set(nodes) == {"nodeA", "nodeB"}, status
    assert all(n["slots"] == 2 and n["last_heartbeat_s"] < 5 for n in nodes.values()), status
    for key in ("busy", "queued", "clients"):
        assert key in status


# --- faults -------------------------------------------------------------------------------------

KILL_SCRIPT = """
    import json, os, sys, time
    import dmp

    def slow(x):
        time.sleep(0.02)
        return x, os.environ.get("DMP_TEST_NODE")

    if __name__ == "__main__":
        with dmp.Pool(address=os.environ["DMP_CLUSTER"]) as pool:
            it = pool.imap(slow, range(int(sys.argv[1])), chunksize=1)
            got = []
            t0 = time.monotonic()
            try:
                for i, r in enumerate(it):
                    got.append(r)
                    if i == 30:
                        print("STARTED", flush=True)
                        sys.stdin.readline()  # the test has broken a node
                        t0 = time.monotonic()
                outcome = "done"
            except dmp.WorkerLostError as exc:
                outcome = "lost: " + str(exc)
            print(json.dumps({"outcome": outcome, "values": [x for x, _ in got],
                              "nodes_before": sorted({str(n) for _, n in got[:31]}),
                              "nodes_after": sorted({str(n) for _, n in got[31:]}),
                              "after_s": time.monotonic() - t0}), flush=True)
"""


def _run_breaking(c: NetCluster, breaker: Any, n: int = 300, client: str = "client1") -> dict[str, Any]:
    """Start a map of ``n`` 20 ms tasks from ``client``, call ``breaker()`` once it is under way.

    Returns the client's report; asserts the map neither hung nor returned wrong values.
    """
    proc = c.topo.spawn(client, [PY, str(c.script("kill.py", KILL_SCRIPT)), str(n)], env=c.client_env(),
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()
    assert line.strip() == "STARTED", f"{line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
    breaker()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the map hung after a node was lost\n{out}\n{err}\n{c.logs()}")
    assert proc.returncode == 0, f"{err}\n{c.logs()}"
    res = dict(json.loads(out.splitlines()[-1]))
    print("outcome:", {k: v for k, v in res.items() if k != "values"})  # shown with -rA
    assert res["nodes_before"] == ["nodeA", "nodeB"], res
    if res["outcome"] == "done":
        assert res["values"] == list(range(n)), res
    else:
        assert res["outcome"].startswith("lost: "), res
    return res


@pytest.mark.timeout(60)
def test_node_daemon_killed_mid_map_the_map_completes_and_orphans_exit(cluster: NetCluster) -> None:
    c = cluster
    node = c.nodes["nodeA"]
    res = _run_breaking(c, lambda: (node.send_signal(signal.SIGKILL), node.wait(5)))
    assert res["outcome"] == "done", res
    # Its worker processes, orphaned, notice their supervisor is gone and exit by themselves.
    left = c.topo.wait_no_pids("nodeA", 15)
    assert not left, f"nodeA's workers {left} outlived their node daemon by 15 s"


@pytest.mark.timeout(60)
def test_orphaned_workers_of_a_killed_node_leave_no_phantom_slots(cluster: NetCluster) -> None:
    c = cluster
    script = c.script("busy.py", """
        import os, sys, time
        import dmp

        def slow(x):
            time.sleep(0.05)
            return x

        if __name__ == "__main__":
            pool = dmp.Pool(address=os.environ["DMP_CLUSTER"])
            res = pool.map_async(slow, range(2000), chunksize=1)  # ~25 s of work: never idle here
            print("STARTED", pool.apply(int), flush=True)
            sys.stdin.readline()
            print("STOPPED", res.ready(), flush=True)  # not done yet
            pool.terminate()
    """)
    client = c.topo.spawn("client1", [PY, str(script)], env=c.client_env(), stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert client.stdout is not None and client.stdin is not None
    assert client.stdout.readline().strip() == "STARTED 0"
    node = c.nodes["nodeA"]
    node.send_signal(signal.SIGKILL)
    node.wait(5)
    # Wait, while nodeA's orphaned workers are kept busy, until the manager has dropped the node
    # daemon (its entry is gone, or only worker-made: no host); then give the orphans a moment.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        nodes = {n["name"]: n for n in c.status()["nodes"]}
        if "nodeA" not in nodes or not nodes["nodeA"]["host"]:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the manager never dropped the killed node daemon: {nodes}\n{c.logs()}")
    time.sleep(1.0)
    out, err = client.communicate("stop\n", timeout=20)
    assert "STOPPED False" in out, f"{out}\n{err}"
    assert not c.topo.wait_no_pids("nodeA", 10), "nodeA's orphaned workers never exited"
    c.wait_nodes({"nodeB": 2}, timeout=20)  # today: nodeA is still listed with 2 slots, forever
    out2 = c.python("client2", c.script("map.py", MAP_SCRIPT), timeout=20)  # today: hangs
    assert out2.returncode == 0, f"{out2.stderr}\n{c.logs()}"


@pytest.mark.timeout(60)
def test_node_host_crashed_mid_map_the_map_completes_on_the_other(cluster: NetCluster) -> None:
    c = cluster
    res = _run_breaking(c, lambda: c.topo.kill_host("nodeA"))
    assert res["outcome"] == "done", res
    assert res["after_s"] < 20, res
    c.wait_nodes({"nodeB": 2})


@pytest.mark.timeout(60)
def test_node_cut_off_the_network_mid_map_then_rejoins(cluster: NetCluster) -> None:
    c = cluster
    res = _run_breaking(c, lambda: c.topo.link_down("nodeA"))
    assert res["outcome"] == "done", res
    assert res["after_s"] < 20, res
    c.wait_nodes({"nodeB": 2})
    c.topo.link_up("nodeA")
    c.wait_nodes({"nodeA": 2, "nodeB": 2}, timeout=20)
    out = c.python("client2", c.script("map.py", MAP_SCRIPT))
    assert out.returncode == 0, f"{out.stderr}\n{c.logs()}"
    assert json.loads(out.stdout)["values"] == [x * x for x in range(100)]


# --- not built yet: cluster-mode Process and managed Queue --------------------------------------


@pytest.mark.timeout(40)
def test_remote_process_output_reaches_the_client_host(shared_cluster: NetCluster) -> None:
    c = shared_cluster
    script = c.script("proc.py", """
        import os
        import sys
        import dmp

        def hello(tag):
            print("hello", tag, "from", os.environ.get("DMP_TEST_NODE"), flush=True)
            print("to stderr", tag, file=sys.stderr, flush=True)

        if __name__ == "__main__":
            p = dmp.Process(target=hello, args=("t1",), address=os.environ["DMP_CLUSTER"])
            p.start()
            p.join(20)
            print("exitcode", p.exitcode)
    """)
    out = c.python("client1", script, timeout=25)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # Forwarded lines carry their origin, as Ray prints them: "(node pid=N) text".
    node = "nodeA" if lines[0].endswith("hello t1 from nodeA") else "nodeB"
    assert lines[0].startswith(f"({node} pid=") and lines[0].endswith(f"hello t1 from {node}"), out.stdout
    assert lines[-1] == "exitcode 0"
    assert f"({node} pid=" in out.stderr and "to stderr t1" in out.stderr


@pytest.mark.timeout(40)
def test_managed_queue_between_client_and_node_hosts(shared_cluster: NetCluster) -> None:
    c = shared_cluster
    # Not "queue.py": a script of that name would shadow the standard library's queue.
    script = c.script("managed_queue.py", """
        import os
        import dmp

        def put(q):
            q.put(("from", os.environ.get("DMP_TEST_NODE")))
            print("node got", q.get(timeout=15))

        if __name__ == "__main__":
            dmp.connect(os.environ["DMP_CLUSTER"])
            q = dmp.Queue()
            p = dmp.Process(target=put, args=(q,))
            p.start()
            print(q.get(timeout=15))
            q.put("back")
            p.join(20)
            print("exitcode", p.exitcode)
    """)
    out = c.python("client2", script, timeout=25)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] in ("('from', 'nodeA')", "('from', 'nodeB')"), out.stdout
    assert "node got back" in out.stdout  # the node's output is forwarded, too
    assert lines[-1] == "exitcode 0"


@pytest.mark.timeout(60)
def test_a_manager_the_client_starts_serves_its_process_on_another_host(shared_cluster: NetCluster) -> None:
    # Issue 10: the client's own manager listens on its bridge address (not ipc://), with
    # the cluster's key; the node's worker opens it with its own key (read from
    # --authkey-file: no DMP_AUTHKEY on the nodes), told only "it is the cluster's".
    c = shared_cluster
    script = c.script("own_manager.py", """
        import os
        import dmp
        from dmp.managers import BaseManager

        class Tally:
            def __init__(self):
                self.items = []
            def add(self, item):
                self.items.append(item)
                return len(self.items)

        class TallyManager(BaseManager):
            pass

        TallyManager.register("Tally", Tally)

        def child(d, tally):
            d["node"] = os.environ.get("DMP_TEST_NODE")
            tally.add("from the node")

        if __name__ == "__main__":
            dmp.connect(os.environ["DMP_CLUSTER"])
            sync = dmp.managers.SyncManager()
            sync.start()
            with TallyManager() as tm:
                d, tally = sync.dict(), tm.Tally()
                p = dmp.Process(target=child, args=(d, tally))
                p.start()
                p.join(30)
                print("addresses", sync.address, tm.address)
                print("exitcode", p.exitcode)
                print("node", d.get("node"))
                print("tally", tally.add("from the client"))
            sync.shutdown()
    """)
    out = c.python("client1", script, timeout=50)
    assert out.returncode == 0, f"{out.stderr}\n{c.logs()}"
    lines = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.strip()}
    assert lines["exitcode"] == ["0"], out.stderr
    ip = c.topo.ip("client1")
    assert all(a.startswith(f"tcp://{ip}:") for a in lines["addresses"]), lines
    assert lines["node"][0] in NODES
    assert lines["tally"] == ["2"]
