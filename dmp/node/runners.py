"""What a worker calls for each task: the job's runner applied to the task.

A map job's runner is a :class:`MapChunk` whose tasks are lists of items; an
apply job's runner is :class:`Apply`, whose tasks are ``(func, args, kwds)``
triples. Runners pickle by value together with the user's function.

In cluster mode a worker serves many pools, so a pool's ``initializer`` and
``maxtasksperchild`` travel with its runners (:class:`PoolInit`): the
initializer runs the first time a worker meets that pool, and a worker that
has run ``maxtasksperchild`` of the pool's tasks retires after the current one.

A runner is called ``runner(task, ctx)``; ``ctx`` is the worker's
:class:`TaskContext`, through which a runner asks its worker to retire after
the task. A runner whose ``announce`` is True has its task announced
(``TaskStarted``, the worker's pid) before it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Pools (by uid) this worker process has initialized, and tasks run per pool.
_initialized: set[str] = set()
_counts: dict[str, int] = {}


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

    def before(self) -> None:
        if self.uid not in _initialized:
            if self.initializer is not None:
                self.initializer(*self.initargs)
            _initialized.add(self.uid)

    def after(self, ctx: TaskContext) -> None:
        if self.max_tasks:
            n = _counts.get(self.uid, 0) + 1
            _counts[self.uid] = n
            if n >= self.max_tasks:
                ctx.retire = True

    def __reduce__(self) -> Any:
        return (PoolInit, (self.uid, self.initializer, self.initargs, self.max_tasks))


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
        init.before()
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
            init.before()
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

    def __init__(self, cls: Any, state: dict[str, Any], grant: Any = None) -> None:
        self.cls = cls
        self.state = state
        self.grant = grant  # dmp.client.mgrkeys.KeyGrant: the caller's keys that may travel

    @classmethod
    def of(cls, process: Any, grant: Any = None) -> RunProcess:
        state = {k: v for k, v in vars(process).items() if k not in _PARENT_ONLY}
        return cls(type(process), state, grant)

    def __call__(self, _task: Any, ctx: TaskContext) -> int:
        import sys
        import traceback

        ctx.retire = True
        obj = self.cls.__new__(self.cls)
        obj.__dict__.update(self.state)
        obj._config = {}
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
            sys.stdout.flush()
            sys.stderr.flush()
        return code

    def __reduce__(self) -> Any:
        return (RunProcess, (self.cls, self.state, self.grant))
