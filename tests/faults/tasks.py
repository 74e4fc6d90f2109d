"""Task functions for the fault tests; they travel by value (the nodes never import tests/).

Every attempt of a task leaves a trace on disk before it does anything else
(``DIR/run-I`` gets one line per attempt: the pid), so a test can count
attempts exactly, even of attempts whose process was killed a moment later.
"""

from __future__ import annotations

import os
import signal
import time


def square(x: int) -> int:
    return x * x


def where(x: int) -> tuple[int, str, int]:
    """(x*x, node name, pid): FAULT_NODE is set per node daemon and inherited by its workers."""
    return x * x, os.environ.get("FAULT_NODE", "local"), os.getpid()


def where_slow(x: int) -> tuple[int, str, int]:
    """As :func:`where`, taking 50 ms: a map of these spreads over every free worker."""
    time.sleep(0.05)
    return where(x)


def log_attempt(directory: str, i: int) -> None:
    fd = os.open(os.path.join(directory, f"run-{i}"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {os.environ.get('FAULT_NODE', 'local')}\n".encode())
    finally:
        os.close(fd)


def attempts(directory: str, i: int) -> list[tuple[int, str]]:
    try:
        with open(os.path.join(directory, f"run-{i}")) as fh:
            return [(int(p), n) for p, n in (ln.split() for ln in fh if ln.strip())]
    except FileNotFoundError:
        return []


def first_time(directory: str, i: int) -> bool:
    """True exactly once per (directory, i), across processes."""
    try:
        os.close(os.open(os.path.join(directory, f"first-{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def die(how: str, directory: str) -> None:
    """End this worker process the way ``how`` says; never returns."""
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "exit":
        os._exit(3)
    elif how == "segv":
        import ctypes
        import faulthandler

        faulthandler.disable()  # inherited from pytest: keep its stack dump out of the log
        ctypes.string_at(0)
    elif how == "oom":
        # Register with the test's OOM killer (harness.OomKiller), then grow
        # until it SIGKILLs us, as the kernel's OOM killer would.
        open(os.path.join(directory, f"oom-{os.getpid()}"), "w").close()
        hog = []
        for _ in range(48):  # at most 1.5 GiB, far past the killer's limit
            hog.append(b"\x01" * (32 * 1024 * 1024))
            time.sleep(0.005)
        time.sleep(5)
    raise AssertionError(f"survived {how!r}")


def maybe_die(arg: tuple[int, str, str, bool]) -> int:
    """Task ``i``: the victims die on their first attempt only; every task returns i*i."""
    i, how, directory, victim = arg
    log_attempt(directory, i)
    time.sleep(0.003)
    if victim and first_time(directory, i):
        die(how, directory)
    return i * i


def always_die(how: str, directory: str) -> None:
    log_attempt(directory, 0)
    die(how, directory)


def sleep_logged(arg: tuple[int, str, float]) -> tuple[int, str, int]:
    """Log the attempt, sleep, return (i*i, node, pid)."""
    i, directory, seconds = arg
    log_attempt(directory, i)
    time.sleep(seconds)
    return i * i, os.environ.get("FAULT_NODE", "local"), os.getpid()


def memory_error_under_rlimit(limit_mib: int) -> int:
    """Cap this process's address space at ``limit_mib`` above what it maps now, then
    allocate twice that: malloc fails, Python raises MemoryError (no process dies)."""
    import resource

    with open("/proc/self/status") as fh:
        vm_kib = next(int(ln.split()[1]) for ln in fh if ln.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_kib * 1024 + limit_mib * 1024 * 1024, hard))
    try:
        hog = b"\x01" * (limit_mib * 2 * 1024 * 1024)
        return len(hog)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def hog(mib: int, directory: str) -> int:
    """Log the attempt, then hold ``mib`` MiB of touched memory, growing 16 MiB at a
    time, until something kills this process (returns only if nothing does, in 30 s)."""
    log_attempt(directory, 0)
    held = []
    for _ in range(mib // 16):
        held.append(b"\x01" * (16 << 20))
        time.sleep(0.002)
    time.sleep(30)
    return len(held)


def held(directory: str, i: int, linger_s: float = 0.0) -> tuple[int, str]:
    """Task ``i``: logs its attempt, waits until ``DIR/go-I`` exists, then
    ``linger_s`` more; returns (pid, node)."""
    log_attempt(directory, i)
    go = os.path.join(directory, f"go-{i}")
    while not os.path.exists(go):
        time.sleep(0.005)
    time.sleep(linger_s)
    return os.getpid(), os.environ.get("FAULT_NODE", "local")


def release(directory: str, i: int) -> None:
    """Let task ``i`` of :func:`held` return."""
    with open(os.path.join(directory, f"go-{i}"), "w"):
        pass
