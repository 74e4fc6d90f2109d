"""The one-task shortcut (Placement.give_now) decides exactly as schedule() would.

apply_async submits one task at a time; with nothing queued anywhere the
scheduler hands it to the first idle worker without schedule()'s general
loop. Two schedulers are driven through the same random histories, one with
the shortcut and one without: every command they return must be the same,
and so must their books. Deaths, cancels and timeouts of tasks given this
way then follow the general path's rules.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from dmp_server import placement
from dmp_server.scheduler import Command, Kill, Scheduler, Send

from dmp.wire import protocol
from dmp.wire.protocol import Status
from tests.unit._scheduler_shapes import shape

pytestmark = pytest.mark.timeout(60)


def _books(s: Scheduler) -> Any:
    return (
        s.queued_total,
        sorted(s.tasks),
        {w.peer: (list(w.assigned), w.tasks_left, w.done) for w in s.workers.values()},
        {c.peer: (c.queued, c.running, dict(c.on), c.done) for c in s.clients.values()},
        sorted(s.hungry.idle),
        list(s.hungry.open),
    )


class Twin:
    """Two schedulers fed the same calls: ``fast`` with the shortcut, ``slow`` without."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fast = Scheduler()
        self.slow = Scheduler()
        self.shortcuts = 0
        real = placement.Placement.give_now

        def counting(sched: Any, *args: Any) -> Any:
            if sched is self.slow:
                return None
            got = real(sched, *args)
            self.shortcuts += got is not None
            return got

        monkeypatch.setattr(placement.Placement, "give_now", counting)

    def call(self, name: str, *args: Any) -> list[Command]:
        a = getattr(self.fast, name)(*args) or []
        b = getattr(self.slow, name)(*args) or []
        assert shape(a) == shape(b), name
        assert _books(self.fast) == _books(self.slow), name
        return a


def test_the_shortcut_gives_what_schedule_would(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = 0
    for seed in range(60):
        taken += _history(Twin(monkeypatch), random.Random(seed))
    assert taken >= 100  # the shortcut was taken often, and changed nothing


def _history(t: Twin, rng: random.Random) -> int:
    capped = rng.random() < 0.3
    t.fast.add_client("A", max_workers=1 if capped else 0)
    t.slow.add_client("A", max_workers=1 if capped else 0)
    t.call("add_client", "B")
    t.call("define_job", "A", 1, [b"runA"], 1)
    t.call("define_job", "B", 1, [b"runB"], 0, 0.0, None, rng.random() < 0.3)
    workers = 0
    next_id = {"A": 0, "B": 0}
    for _ in range(120):
        op = rng.random()
        live = sorted(t.fast.workers)
        if op < 0.12 or not live:
            workers += 1
            t.call("add_worker", f"w{workers}", "n", 100 + workers, rng.choice([0, 0, 3]))
        elif op < 0.55:
            client = rng.choice("AB")
            n = 1 if rng.random() < 0.8 else rng.randint(2, 4)
            tasks = [(next_id[client] + i, [f"{client}{next_id[client] + i}".encode()]) for i in range(n)]
            next_id[client] += n
            t.call("submit", client, 1, tasks)
        elif op < 0.85:
            w = t.fast.workers[rng.choice(live)]
            if w.assigned:
                items = [[k, task.attempt, int(Status.OK), 0, rng.choice([1e-5, 0.01]), ""]
                         for k, task in list(w.assigned.items())[: rng.randint(1, len(w.assigned))]]
                t.call("results", w.peer, items, [])
        elif op < 0.95:
            w = t.fast.workers[rng.choice(live)]
            running = next(iter(w.assigned)) if w.assigned and rng.random() < 0.7 else -1
            t.call("remove_worker", w.peer, -9, running)
        else:
            t.call("remove_worker", rng.choice(live), 0, -1)
    return t.shortcuts


def _one_idle_worker() -> Scheduler:
    s = Scheduler()
    s.add_client("A")
    s.add_worker("w1", "n", 101, 0)
    return s


def test_a_task_given_by_the_shortcut_is_retried_when_its_worker_dies() -> None:
    s = _one_idle_worker()
    s.define_job("A", 1, [], 1)
    (sent,) = s.submit("A", 1, [(7, [b"t"])])
    assert isinstance(sent, Send) and sent.to == "w1" and isinstance(sent.msg, protocol.Dispatch)
    key = sent.msg.tasks[0][0]
    assert s.remove_worker("w1", -9, key) == []  # no worker left: requeued, charged an attempt
    assert s.queued() == 1 and s.tasks[key].attempt == 1
    (again,) = s.add_worker("w2", "n", 102, 0)
    assert again.to == "w2" and again.msg.tasks == [[key, s.tasks[key].job.key, 1, 1]]  # type: ignore[attr-defined]
    (lost,) = s.remove_worker("w2", -9, key)
    assert isinstance(lost, Send) and lost.msg.items[0][:3] == [1, 7, int(Status.LOST)]  # type: ignore[attr-defined]


def test_a_task_given_by_the_shortcut_times_out_alone() -> None:
    s = _one_idle_worker()
    s.define_job("A", 1, [], 3, timeout=0.5)
    (sent,) = s.submit("A", 1, [(7, [b"t"])])
    assert sent.msg.jobs == [[s.clients["A"].jobs[1].key, 0, 0.5]]  # type: ignore[attr-defined]  # the worker learns the limit
    key = sent.msg.tasks[0][0]  # type: ignore[attr-defined]
    (out,) = s.remove_worker("w1", -9, key, timed_out=True)
    assert out.msg.items[0][:3] == [1, 7, int(Status.TIMEOUT)]  # type: ignore[attr-defined]
    assert s.tasks == {} and s.clients["A"].running == 0


def test_cancelling_a_job_given_by_the_shortcut_kills_its_worker() -> None:
    s = _one_idle_worker()
    s.define_job("A", 1, [], 0)
    s.submit("A", 1, [(7, [b"t"])])
    cmds = s.cancel_job("A", 1)
    assert [c.worker for c in cmds if isinstance(c, Kill)] == ["w1"]
    cancelled = [c for c in cmds if isinstance(c, Send) and isinstance(c.msg, protocol.JobResults)]
    assert cancelled[0].msg.items[0][2] == int(Status.CANCELLED)  # type: ignore[attr-defined]
    assert s.tasks == {} and s.clients["A"].running == 0
