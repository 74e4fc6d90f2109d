"""Module-level task and process targets shared by the conformance tests.

They live at module level so the standard library can pickle them by
reference; dmp (cloudpickle) handles them the same way. Nothing here may
depend on which implementation runs it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

# --- globals read by workers -------------------------------------------------

#: Set by the parent before a pool exists (fork semantics test).
PARENT_GLOBAL: Any = None

#: Set in each worker by ``init_global`` (initializer test).
WORKER_GLOBAL: Any = None


def init_global(value: Any) -> None:
    global WORKER_GLOBAL
    WORKER_GLOBAL = value


def read_worker_global(_: Any = None) -> Any:
    return WORKER_GLOBAL


def read_parent_global(_: Any = None) -> Any:
    return PARENT_GLOBAL


# --- plain tasks --------------------------------------------------------------


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def add_kw(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + 10 * b + 100 * c


def identity(x: Any) -> Any:
    return x


def getpid(_: Any = None) -> int:
    return os.getpid()


def getpid_slow(_: Any = None) -> int:
    time.sleep(0.05)
    return os.getpid()


def sleep_then_return(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def sleep_square(x: int) -> int:
    # Reverse-order sleeps so unordered results really come back out of order.
    time.sleep(0.01 * (5 - x % 5))
    return x * x


class TaskError(Exception):
    """A user-defined exception type raised by a task."""


def raise_value_error(msg: str = "boom") -> None:
    raise ValueError(msg)


def raise_task_error(x: Any) -> None:
    raise TaskError(f"task failed on {x!r}")


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"three is bad: {x}")
    return x * x


def return_lock(_: Any = None) -> Any:
    """Returns something neither pickle nor cloudpickle can serialise."""
    return threading.Lock()


# --- tasks that kill their own worker ----------------------------------------


def _first_time(marker_dir: str, tag: str) -> bool:
    """True exactly once per (marker_dir, tag) across all processes."""
    try:
        fd = os.open(
            os.path.join(marker_dir, f"{tag}.marker"), os.O_CREAT | os.O_EXCL | os.O_WRONLY
        )
    except FileExistsError:
        return False
    os.close(fd)
    return True


def sigkill_once(marker_dir: str, x: int) -> int:
    """Kills its own worker with SIGKILL the first time any worker runs it."""
    if _first_time(marker_dir, "sigkill"):
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # not reached
    return x * x


def exit_once(marker_dir: str, x: int) -> int:
    """Leaves its worker with os._exit(3) the first time any worker runs it."""
    if _first_time(marker_dir, "exit"):
        os._exit(3)
    return x * x


def always_sigkill(_: Any = None) -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)  # not reached


def always_exit(_: Any = None) -> None:
    os._exit(3)


# --- Process targets ----------------------------------------------------------


def noop() -> None:
    pass


def exit_with(code: int) -> None:
    sys.exit(code)


def raise_in_child() -> None:
    # The traceback goes to the child's stderr, which pytest captures.
    raise RuntimeError("raised in child on purpose")


def sleep_forever() -> None:
    time.sleep(60)


def ignore_sigterm_then_sleep(ready: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(60)


def put_args(q: Any, *args: Any, **kwargs: Any) -> None:
    q.put((args, kwargs))


def put_identity(q: Any, current_process: Any, parent_process: Any) -> None:
    """Reports who the child thinks it is."""
    me = current_process()
    parent = parent_process()
    q.put(
        {
            "pid": os.getpid(),
            "name": me.name,
            "cp_pid": me.pid,
            "parent_pid": None if parent is None else parent.pid,
        }
    )


def put_items(q: Any, items: list[Any]) -> None:
    for item in items:
        q.put(item)


def put_pid(q: Any) -> None:
    q.put(os.getpid())


def echo_queue(inq: Any, outq: Any) -> None:
    """Copies items from inq to outq until None."""
    while True:
        item = inq.get()
        if item is None:
            break
        outq.put(item)


def joinable_consumer(q: Any, out: Any) -> None:
    while True:
        item = q.get()
        try:
            if item is None:
                return
            out.put(item * 2)
        finally:
            q.task_done()


def pipe_echo(conn: Any) -> None:
    """Echoes objects back until None, then a bytes message, then closes."""
    while True:
        obj = conn.recv()
        if obj is None:
            break
        conn.send(obj)
    data = conn.recv_bytes()
    conn.send_bytes(data[::-1])
    conn.close()


def pipe_send(conn: Any, items: list[Any]) -> None:
    for item in items:
        conn.send(item)
    conn.close()


def pipe_send_then_leave(conn: Any, items: list[Any], how: str) -> None:
    """Sends ``items`` and leaves without closing ``conn``: returns, ``os._exit(3)`` or SIGKILL."""
    for item in items:
        conn.send(item)
    if how == "exit":
        os._exit(3)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)


def pipe_from_queue(q: Any, items: list[Any]) -> None:
    """Takes a Pipe end from ``q``, sends ``items`` on it and closes it."""
    conn = q.get()
    for item in items:
        conn.send(item)
    conn.close()


def pipe_reply_once(conn: Any) -> None:
    """Answers one message with its double, then closes."""
    conn.send(conn.recv() * 2)
    conn.close()


# --- synchronisation targets ---------------------------------------------------


def try_acquire(lock: Any, out: Any) -> None:
    """Reports whether lock could be taken within a short timeout."""
    got = lock.acquire(timeout=0.2)
    if got:
        lock.release()
    out.put(got)


def acquire_lock(lock: Any) -> None:
    """Takes the lock and exits holding it."""
    assert lock.acquire(timeout=5)


def hold_lock(lock: Any, holding: Any) -> None:
    """Takes the lock, says so, and waits (to be killed) holding it."""
    assert lock.acquire(timeout=5)
    holding.set()
    time.sleep(60)


def locked_increment(lock: Any, value: Any, n: int) -> None:
    for _ in range(n):
        with lock:
            value.value += 1


def value_increment(value: Any, n: int) -> None:
    for _ in range(n):
        with value.get_lock():
            value.value += 1


def semaphore_holder(sem: Any, inside: Any, release: Any, out: Any) -> None:
    with sem:
        inside.set()
        release.wait(10)
    out.put("released")


def set_event(event: Any) -> None:
    event.set()


def wait_event(event: Any, out: Any) -> None:
    out.put(event.wait(10))


def condition_waiter(cond: Any, flag: Any, out: Any) -> None:
    with cond:
        ok = cond.wait_for(lambda: flag.value == 1, timeout=10)
    out.put(ok)


def barrier_waiter(barrier: Any, out: Any) -> None:
    out.put(barrier.wait(10))


def fill_array(arr: Any) -> None:
    for i in range(len(arr)):
        arr[i] = i * i


def set_value(value: Any, new: Any) -> None:
    value.value = new


def fill_shared(d: Any, lst: Any, ns: Any) -> None:
    """Mutates Manager proxies from a child."""
    d["child"] = True
    lst.append(3)
    ns.x = ns.x + 1


class CarriesLock(Exception):
    """An exception whose payload cannot be pickled."""


def raise_with_lock(_: Any = None) -> None:
    raise CarriesLock("holding a lock", threading.Lock())


class BadInit(Exception):
    """Pickles fine, but unpickling calls BadInit(msg) and fails."""

    def __init__(self, msg: str, code: int) -> None:
        super().__init__(msg)
        self.code = code


def raise_bad_init(_: Any = None) -> None:
    raise BadInit("cannot be rebuilt", 7)


def big_bytes(n: int) -> bytes:
    return b"x" * n


def print_lines(text: str) -> None:
    print(text, flush=False)
    print(text + "-err", file=sys.stderr)


def pool_in_child(mp: Any, q: Any) -> None:
    """Uses a Pool from inside a (non-daemon) child process."""
    with mp.Pool(2) as p:
        q.put(p.map(square, range(10)))
