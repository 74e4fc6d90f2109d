"""dmp's main job: the seed examples locally, then a Pool.map over two worker
nodes joined to a manager daemon on loopback, then everything shut down."""

import collections
import os
import signal
import socket
import subprocess
import sys
import time

import dmp
from dmp.cli import fetch_status


def f(x):
    return x * x


def info(title):
    print(title)
    print("module name:", __name__)
    print("parent process:", os.getppid())
    print("process id:", os.getpid())


def hello(name):
    info("function hello")
    print("hello", name)


def where(x):
    return x * x, os.environ.get("DMP_NODE_NAME", "?"), os.getpid()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_demo():
    address = f"tcp://127.0.0.1:{free_port()}"
    daemons = []

    def spawn(*args, **env):
        cmd = [sys.executable, "-m", "dmp", *args]
        print("$", " ".join(["dmp", *args]))
        daemons.append(subprocess.Popen(cmd, env={**os.environ, **env}, stderr=subprocess.DEVNULL))

    try:
        spawn("manager", "--bind", address)
        spawn("worker", address, "--processes", "2", "--name", "node-a", DMP_NODE_NAME="node-a")
        spawn("worker", address, "--processes", "2", "--name", "node-b", DMP_NODE_NAME="node-b")
        deadline = time.monotonic() + 30
        while (status := fetch_status(address, None, 1.0)) is None or status["slots"] < 4:
            if time.monotonic() > deadline:
                raise SystemExit("the loopback cluster did not come up")
            time.sleep(0.1)
        with dmp.Pool(address=address) as pool:
            results = pool.map(where, range(40), chunksize=1)
        print("cluster map:", [r[0] for r in results])
        ran = collections.Counter(node for _, node, _ in results)
        for node, count in sorted(ran.items()):
            pids = sorted({pid for _, n, pid in results if n == node})
            print(f"  {node} ran {count} tasks in worker pids {pids}")
    finally:
        for proc in reversed(daemons):
            proc.send_signal(signal.SIGTERM)
        for proc in daemons:
            proc.wait(10)
        print("manager and worker nodes shut down")


if __name__ == "__main__":
    with dmp.Pool(5) as p:
        print(p.map(f, [1, 2, 3]))
    info("main line")
    proc = dmp.Process(target=hello, args=("bob",))
    proc.start()
    proc.join()
    cluster_demo()
