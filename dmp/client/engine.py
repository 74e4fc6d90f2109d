"""The engines a Pool runs on; local mode's: the manager daemon's reactor embedded in this process.

    Pool --Session--> LocalLink --> Turns --> Daemon.poll/handle --ipc://--> workers
                                      ^ caller waiting, or the engine thread
                                              ^-- sentinel fds of the forked workers

Workers are forked from the thread that creates the engine (so globals set
before the pool exists are visible, as with multiprocessing's fork start
method); replacements are forked by whichever thread holds the reactor's
turn (dmp.client.turns). Everything else, scheduling, retries and results,
is the cluster's manager code.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

from dmp import _config
from dmp.client import exiting
from dmp.client import session as session_mod
from dmp.client.turns import Turns
from dmp.deaths import parse_size
from dmp.errors import ProcessError
from dmp.node import runners
from dmp.node.supervisor import Supervisor
from dmp.node.worker import WorkerConfig

_live: weakref.WeakSet[LocalEngine] = weakref.WeakSet()


class LocalEngine:
    def __init__(
        self,
        *,
        processes: int,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        max_tasks: int,
        method: str = "fork",
        memory_limit: int = 0,
    ) -> None:
        from dmp_server.daemon import Daemon

        # Nobody else may reach this pool's manager: an abstract unix socket has no
        # permissions, and any local user can find its name (/proc/net/unix). Forked
        # workers talk over pipes made before the fork (dmp_server.workerpipes): nothing
        # listens. Spawned ones connect to an endpoint with a key of this pool's own, which
        # reaches them only in their config, through their private start-up pipe.
        forked = method == "fork"
        endpoint = "" if forked else f"ipc://@dmp-{os.getpid()}-{os.urandom(6).hex()}"
        key = None if forked else os.urandom(32)
        template = WorkerConfig(
            address=endpoint, node="local", key=key, initializer=initializer, initargs=initargs, max_tasks=max_tasks
        )
        self.supervisor = Supervisor(template, count=processes, method=method, memory_limit=memory_limit)
        self.daemon = Daemon(bind=[endpoint] if endpoint else [], key=key, supervisor=self.supervisor)
        self.turns = Turns(self.daemon.poll, self.daemon.handle, self.daemon.wake, reenter=False)
        self.session = session_mod.Session()
        self.session.link = session_mod.LocalLink(self.daemon, self.turns, self.session)
        self._thread: threading.Thread | None = None  # once started
        self._done = False
        _live.add(self)

    def start(self) -> None:
        """Fork the workers, then start the engine thread. The forks come last,
        once the pool has defined its jobs (every page the process writes after
        a fork is copied, and the workers need nothing more from it before their
        first task), on the turn, so that the thread steps back afterwards.

        The thread starts after the forks, and ``Pool()`` does not wait for it
        to run (``_start_soon``): ``Thread.start``'s wait delayed the first
        fork when made before them, and the pool's first call when made after
        them (the new thread waits for a CPU the workers hold); a call needs no
        engine thread, the caller steps the reactor itself (measured in
        docs/performance.md)."""
        thread = threading.Thread(target=self._run, name="dmp-engine", daemon=True)
        try:
            with self.turns.held():
                self.supervisor.start()
            _start_soon(thread)
            self._thread = thread  # started (it may not have run yet)
        except BaseException:
            self.stop(kill=True)
            raise

    def _run(self) -> None:
        try:
            while not self.turns.stopped:
                self.turns.serve(None)  # a step, unless a waiting caller takes them
        finally:
            self.turns.close(self.daemon.close)
            self.session.fail_all(ProcessError("the pool's engine stopped before the task finished"))

    @property
    def processes(self) -> list[Any]:
        return [h.process for h in self.supervisor.handles.values()]

    def stop(self, *, kill: bool, timeout: float = 10.0) -> None:
        """Stop the reactor, then end and reap the workers. Idempotent."""
        if self._done:
            return
        self._done = True
        self.supervisor.respawn = False
        self.turns.stop()
        if self._thread is None:  # never started
            self.turns.close(self.daemon.close)
            self.session.fail_all(ProcessError("the pool's engine stopped before the task finished"))
        # A callback on the reactor's turn (terminate() from a callback, say)
        # cannot wait for the reactor to end: it ends once the callback returns.
        thread = self._thread
        if thread is not None and threading.current_thread() is not thread and not self.turns.runs_here():
            if thread._started.wait(timeout):  # type: ignore[attr-defined]  # (it may not have run yet)
                thread.join(timeout)
            if not thread.is_alive():
                # Let go of it now, not when the pool's reference cycles are collected:
                # every later fork in this process resets each Thread object still alive.
                self._thread = None
        self.supervisor.stop(kill=kill, timeout=timeout)
        _live.discard(self)


def _start_soon(thread: threading.Thread) -> None:
    """``thread.start()`` without waiting until the thread runs: on 3.11 and
    3.12, ``Thread.start``'s own steps but its last (a wait on the thread's
    ``_started``, which ``join`` and ``is_alive`` still honour); elsewhere
    ``thread.start()`` itself."""
    limbo: Any = getattr(threading, "_limbo", None)
    lock: Any = getattr(threading, "_active_limbo_lock", None)
    start_new: Any = getattr(threading, "_start_new_thread", None)
    if sys.version_info >= (3, 13) or limbo is None or lock is None or start_new is None:
        thread.start()
        return
    with lock:
        limbo[thread] = thread
    try:
        start_new(thread._bootstrap, ())  # type: ignore[attr-defined]
    except BaseException:
        with lock:
            limbo.pop(thread, None)
        raise


class ClusterEngine:
    """Cluster mode: the session talks to a manager daemon over a RemoteLink."""

    def __init__(self, *, address: str, authkey: bytes | None, max_workers: int = 0) -> None:
        from dmp.client.link import RemoteLink

        self.session = session_mod.Session()
        self.link = RemoteLink(self.session, address, authkey, max_workers=max_workers)
        self.session.link = self.link
        welcome = self.link.welcome
        self.slots = welcome.slots if welcome is not None else 0
        self.processes: list[Any] = []
        _live.add(self)  # type: ignore[arg-type]

    def start(self) -> None:
        """Nothing to start: the manager's workers are there already."""

    def stop(self, *, kill: bool, timeout: float = 10.0) -> None:
        self.link.close()
        _live.discard(self)  # type: ignore[arg-type]


_shared: dict[tuple[str, bytes | None], ClusterEngine] = {}
_shared_lock = threading.Lock()


def shared_cluster(address: str, authkey: bytes | None) -> ClusterEngine:
    """One engine (and so one Session) per manager for this process's remote Processes."""
    with _shared_lock:
        engine = _shared.get((address, authkey))
        if engine is None or engine.session.closed is not None:
            engine = ClusterEngine(address=address, authkey=authkey)
            _shared[(address, authkey)] = engine
        return engine


def _stop(local: bool) -> None:
    for engine in list(_live):
        if isinstance(engine, LocalEngine) == local:
            try:
                engine.stop(kill=True, timeout=1.0)
            except Exception:
                pass


@atexit.register
def _stop_local() -> None:
    # Local pools end first, before multiprocessing's exit handler: their
    # workers are (daemonic) multiprocessing children, which that handler
    # would otherwise terminate and join while this engine reaps them.
    _stop(local=True)


@exiting.after_children
def _stop_cluster() -> None:
    # Cluster links last: multiprocessing's exit handler first waits, through
    # them, for the remote Processes the script did not join.
    _stop(local=False)


def for_pool(
    target: _config.Target,
    processes: int | None,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
    maxtasksperchild: int | None,
    context: Any,
    worker_memory_limit: int | str | None = None,
) -> tuple[LocalEngine | ClusterEngine, runners.PoolInit | None, int]:
    """The engine a Pool runs on, the initializer its cluster workers run (or
    None), and its size: a ClusterEngine when ``target`` names a manager, else
    a LocalEngine forking ``processes`` workers.

    ``worker_memory_limit`` (bytes, or a text such as ``"2GiB"``; local pools
    only, a cluster's nodes set theirs with ``dmp worker
    --worker-memory-limit``): a worker whose resident memory passes it while
    running a task is killed, and the task is retried or fails as for any
    lost worker.

    Raises:
        ValueError: a bad ``worker_memory_limit``, or one for a cluster.
    """
    memory_limit = 0 if worker_memory_limit is None else parse_size(worker_memory_limit)
    if target.address is not None:
        if memory_limit:
            raise ValueError("worker_memory_limit= is for a local pool; a cluster's nodes set theirs "
                             "(dmp worker --worker-memory-limit)")
        init = None
        if initializer is not None or maxtasksperchild is not None:
            init = runners.PoolInit(os.urandom(16).hex(), initializer, initargs, maxtasksperchild or 0)
        # Pool(k): the manager runs this pool's tasks on at most k workers at once.
        cluster = ClusterEngine(address=target.address, authkey=target.authkey, max_workers=processes or 0)
        return cluster, init, processes or max(1, cluster.slots)
    from dmp import context as context_mod

    processes = processes or _config.cpu_count()
    method = context.get_start_method() if context is not None else context_mod.get_start_method()
    local = LocalEngine(
        processes=processes,
        initializer=initializer,
        initargs=initargs,
        max_tasks=maxtasksperchild or 0,
        method=method or "fork",
        memory_limit=memory_limit,
    )
    return local, None, processes
