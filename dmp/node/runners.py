"""What a worker calls for each task: the job's runner applied to the task.

A map job's runner is a :class:`MapChunk` whose tasks are lists of items; an
apply job's runner is :class:`Apply`, whose tasks are ``(func, args, kwds)``
triples. Runners pickle by value together with the user's function.

In cluster mode a worker serves many pools, so a pool's ``initializer`` and
``maxtasksperchild`` travel with its runners (:class:`PoolInit`): the
initializer runs the first time a worker meets that pool, before that task,
and a worker that has run ``maxtasksperchild`` of the pool's tasks retires
after the current one. A pool with an initializer also sends, when it
starts, one :func:`initialize` task per slot it may use, so that free workers
run the initializer at once, as the standard library's do at worker start.

A runner is called ``runner(task, ctx)``; ``ctx`` is the worker's
:class:`TaskContext`, through which a runner asks its worker to retire after
the task. A runner whose ``announce`` is True has its task announced
(``TaskStarted``, the worker's pid) before it runs.
"""

from __future__ import annotations

import multiprocessing.process
import os
from collections.abc import Callable
from typing import Any

from dmp import serialization

# Pools (by uid) this worker process has initialized, and tasks run per pool.
_initialized: set[str] = set()
_counts: dict[str, int] = {}
# Per pool: the globals its initializer ran with, when it travelled by value.
_init_globals: dict[str, dict[str, Any]] = {}


class TaskContext:
    """What a runner may tell the worker running it; one per worker process."""

    __slots__ = ("retire",)

    def __init__(self) -> None:
        # Set by a runner: this worker exits after the current task
        # (maxtasksperchild reached, or a Process's run() is over).
        self.retire = False


class Runner:
    """A job's runner: the worker calls ``runner(task, ctx)`` for each of the job's tasks."""

    __slots__ = ()

    # True: the worker announces the task (TaskStarted, its pid) before running it.
    announce = False

    def __call__(self, task: Any, ctx: TaskContext) -> Any:
        raise NotImplementedError


class PoolInit:
    """A cluster pool's initializer and maxtasksperchild, applied per worker."""

    __slots__ = ("initargs", "initializer", "max_tasks", "uid")

    def __init__(self, uid: str, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...], max_tasks: int) -> None:
        self.uid = uid
        self.initializer = initializer
        self.initargs = initargs
        self.max_tasks = max_tasks

    def before(self, func: Any = None) -> None:
        """Run the initializer if this worker has not yet; then let ``func`` see what it set."""
        if self.uid not in _initialized:
            if self.initializer is not None:
                self.initializer(*self.initargs)
                found = getattr(self.initializer, "__globals__", None)
                if isinstance(found, dict):
                    _init_globals[self.uid] = found
            _initialized.add(self.uid)
        if func is not None:
            _adopt(self.uid, func)

    def after(self, ctx: TaskContext) -> None:
        if self.max_tasks:
            n = _counts.get(self.uid, 0) + 1
            _counts[self.uid] = n
            if n >= self.max_tasks:
                ctx.retire = True

    def __reduce__(self) -> Any:
        return (PoolInit, (self.uid, self.initializer, self.initargs, self.max_tasks))


def _adopt(uid: str, func: Any) -> None:
    """Give ``func`` the globals pool ``uid``'s initializer ran with.

    A function sent by value (``__main__``'s, a lambda) is rebuilt from each
    pickle with a globals dict of its own, so what an initializer from the
    same module set (``global model; model = load()``) would be invisible to
    the tasks pickled apart from it. Their globals take the initializer's
    objects instead, as a forked pool's workers share one module: the values
    as the pool started, plus what the initializer did.
    """
    source = _init_globals.get(uid)
    target = getattr(func, "__globals__", None)
    if source is None or not isinstance(target, dict) or target is source:
        return
    if target.get("__name__") != source.get("__name__"):
        return
    for name, value in source.items():
        if not name.startswith("__"):
            target[name] = value


def initialize() -> None:
    """A cluster pool's start-up task: its :class:`Apply` runner runs the pool's initializer (once per worker).

    The nodes' workers are shared between pools, so none starts for a new
    pool: it sends one of these per slot it may use, in a job whose tasks go
    only to idle workers (``DefineJob.idle_only``), so free workers run the
    initializer at once (a busy one runs it before its first task of the
    pool) and none waits behind another task. Their outcomes go to nobody.
    """


def call(task: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]) -> Any:
    """An apply task without a runner (a local pool's apply job)."""
    func, args, kwds = task
    return func(*args, **kwds)


class Apply(Runner):
    """Runs ``func(*args, **kwds)`` tasks, within a cluster pool's init."""

    __slots__ = ("init",)

    def __init__(self, init: PoolInit | None = None) -> None:
        self.init = init

    def __call__(self, task: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]], ctx: TaskContext) -> Any:
        init = self.init
        if init is None:
            return call(task)
        init.before(task[0])
        if task[0] is initialize:
            return None  # not one of the pool's tasks: maxtasksperchild does not count it
        try:
            return call(task)
        finally:
            init.after(ctx)

    def __reduce__(self) -> Any:
        return (Apply, (self.init,))


class MapChunk(Runner):
    """Runs ``func`` over one chunk of a map's items (``star``: items are arg tuples)."""

    __slots__ = ("func", "init", "star")

    def __init__(self, func: Callable[..., Any], star: bool, init: PoolInit | None = None) -> None:
        self.func = func
        self.star = star
        self.init = init

    def __call__(self, items: list[Any], ctx: TaskContext) -> list[Any]:
        init = self.init
        if init is not None:
            init.before(self.func)
        try:
            func = self.func
            if self.star:
                return [func(*args) for args in items]
            return [func(x) for x in items]
        finally:
            if init is not None:
                init.after(ctx)

    def __reduce__(self) -> Any:
        return (MapChunk, (self.func, self.star, self.init))


# Attributes of a multiprocessing Process that belong to the parent's side;
# _dmp_target holds the cluster's authkey, which must never ride in a payload.
_PARENT_ONLY = frozenset({"_config", "_popen", "_parent_pid", "_parent_name", "_identity", "_closed", "_dmp_target"})


class RunProcess(Runner):
    """Runs a (cluster-mode) ``dmp.Process``'s ``run()`` on a worker; returns its exit code.

    The worker announces the task (its pid) before running it and retires
    afterwards, so the next task gets a fresh process, as a Process would.
    """

    announce = True

    def __init__(self, cls: Any, state: dict[str, Any], daemon: bool = False, grant: Any = None) -> None:
        self.cls = cls
        self.state = state
        self.daemon = daemon
        self.grant = grant  # dmp.client.mgrkeys.KeyGrant: the caller's keys that may travel

    @classmethod
    def of(cls, process: Any, grant: Any = None) -> RunProcess:
        state = {k: v for k, v in vars(process).items() if k not in _PARENT_ONLY}
        return cls(type(process), state, process.daemon, grant)

    def __call__(self, _task: Any, ctx: TaskContext) -> int:
        import sys
        import traceback

        ctx.retire = True
        obj = self.cls.__new__(self.cls)
        obj.__dict__.update(self.state)
        worker: Any = multiprocessing.process.current_process()
        # This process *is* the Process now, as a forked child is: its name,
        # its daemon flag (a non-daemon one may have children), the worker's
        # authkey and identity (the worker retires after it).
        obj._config = {**worker._config, "daemon": bool(self.daemon)}
        obj._identity = worker._identity
        obj._parent_pid, obj._parent_name = os.getppid(), worker.name
        obj._popen, obj._closed = None, False
        multiprocessing.process._current_process = obj  # type: ignore[attr-defined]
        try:
            from dmp import _config
            from dmp.client import mgrkeys

            mgrkeys.adopt(self.grant, obj, _config.cluster_key())
            obj.run()
            code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:
            print(f"Process {self.state.get('_name', '?')}:", file=sys.stderr)
            traceback.print_exc()
            code = 1
        finally:
            multiprocessing.process._current_process = worker  # type: ignore[attr-defined]
            sys.stdout.flush()
            sys.stderr.flush()
        return code

    def __reduce__(self) -> Any:
        return (RunProcess, (self.cls, self.state, self.daemon, self.grant))


class LazyRunner:
    """A job's runner, unpickled at first use (a failure fails each task)."""

    __slots__ = ("frames", "value")

    _UNSET: Any = object()

    def __init__(self, frames: list[Any]) -> None:
        self.frames = frames
        self.value: Any = LazyRunner._UNSET

    def get(self) -> Any:
        if self.value is LazyRunner._UNSET:
            self.value = serialization.loads(self.frames) if self.frames else None
            self.frames = []
        return self.value
