"""The start method chosen once, in the main module, before anything starts."""

import multiprocessing
import os


def describe(tag):
    return tag, multiprocessing.current_process().name != "MainProcess"


def greet(q, name):
    q.put((f"hello {name}", os.getpid()))


if __name__ == "__main__":
    multiprocessing.set_start_method("spawn")
    print("start method:", multiprocessing.get_start_method())

    q = multiprocessing.Queue()
    p = multiprocessing.Process(target=greet, args=(q, "spawned"))
    p.start()
    greeting, child_pid = q.get(timeout=60)
    print(greeting, "from another process:", child_pid != os.getpid())
    p.join(60)
    print("exit code:", p.exitcode)

    with multiprocessing.Pool(2) as pool:
        print(sorted(pool.map(describe, ["a", "b", "c"])))

    # A context picks a method for its own objects, leaving the global choice alone.
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(2) as pool:
        print("forkserver pool:", pool.map(abs, [-1, -2, 3]))
    print("global method is still", multiprocessing.get_start_method())
