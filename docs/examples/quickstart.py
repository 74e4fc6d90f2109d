"""dmp's main job: the seed examples locally, then a Pool.map over two worker
nodes joined to a manager daemon on loopback, then everything shut down."""

import os

import dmp


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
    return x * x, os.getpid()


def cluster_demo():
    # A real `dmp manager` and two `dmp worker` daemons (2 worker processes
    # each) on loopback, with a fresh authkey; stopped when the block ends.
    with dmp.LocalCluster(nodes=2, processes=2) as cluster:
        print("cluster up at", cluster.address)
        dmp.wait_for_workers(4, timeout=30, address=cluster.address, authkey=cluster.authkey)
        with dmp.Pool(address=cluster.address, authkey=cluster.authkey) as pool:
            results = pool.map(where, range(40), chunksize=1)
        print("cluster map:", [square for square, _ in results])
        print("worker pids:", sorted({pid for _, pid in results}))
        status = dmp.status(cluster.address, cluster.authkey)
        print(f"slots {status['slots']}, busy {status['busy']}, queued {status['queued']}")
        for node in sorted(status["nodes"], key=lambda n: n["name"]):
            print(f"  {node['name']} ran {node['tasks_done']} tasks on {node['slots']} slots")
    print("manager and worker nodes shut down")


if __name__ == "__main__":
    with dmp.Pool(5) as p:
        print(p.map(f, [1, 2, 3]))
    info("main line")
    proc = dmp.Process(target=hello, args=("bob",))
    proc.start()
    proc.join()
    cluster_demo()
