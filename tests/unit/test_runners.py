"""The cluster pool runners' initializer and maxtasksperchild bookkeeping, in-process."""

from __future__ import annotations

import uuid

from dmp.node import runners


def test_start_up_task_runs_the_initializer_once_and_is_not_counted_toward_maxtasksperchild() -> None:
    calls: list[str] = []
    runner = runners.Apply(runners.PoolInit(uuid.uuid4().hex, calls.append, ("init",), 1))
    ctx = runners.TaskContext()
    assert runner((runners.initialize, (), {}), ctx) is None
    assert runner((runners.initialize, (), {}), ctx) is None  # a second one on the same worker: nothing
    assert calls == ["init"] and not ctx.retire
    assert runner((len, ("abc",), {}), ctx) == 3  # the pool's first task: counted, the worker retires
    assert calls == ["init"] and ctx.retire


def test_initializer_runs_before_the_first_task_when_no_start_up_task_came() -> None:
    calls: list[str] = []
    runner = runners.MapChunk(calls.append, False, runners.PoolInit(uuid.uuid4().hex, calls.append, ("init",), 0))
    assert runner(["a", "b"], runners.TaskContext()) == [None, None]
    assert calls == ["init", "a", "b"]


def test_tasks_pickled_apart_from_a_by_value_initializer_see_the_globals_it_set() -> None:
    import pickle

    import cloudpickle

    source = "state = {}\ndef init(v):\n    global token\n    token = v\n    state['k'] = v\ndef read():\n    return token, state.get('k')\n"
    module: dict[str, object] = {"__name__": "__main__"}
    exec(compile(source, "<user main>", "exec"), module)
    pool_init = runners.PoolInit(uuid.uuid4().hex, module["init"], ("tok",), 0)  # type: ignore[arg-type]
    # As on a node: the runner and every task come from pickles of their own.
    runner = pickle.loads(cloudpickle.dumps(runners.Apply(pool_init)))
    for _ in range(2):
        task = pickle.loads(cloudpickle.dumps((module["read"], (), {})))
        assert runner(task, runners.TaskContext()) == ("tok", "tok")
