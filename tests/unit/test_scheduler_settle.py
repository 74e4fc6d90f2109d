"""A worker's outcomes in two halves: take_results (checks, JobResults), then settle (the books).

The reactor sends take_results' JobResults before settle runs, so a result
leaves the manager without waiting for the bookkeeping. Nothing else may
change: two schedulers are driven through the same random histories (applies,
maps, ended and cancelled jobs, duplicate, stale and foreign TaskDones, worker
deaths), one answering each TaskDone with ``results`` as it was before the
split (kept below), the other with take_results then settle; the commands
they return, in order, and their books must be the same. Then the cases where
an early result could be lost or doubled, one by one.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from dmp_server import scheduler as scheduler_mod
from dmp_server.scheduler import Command, Kill, Scheduler, Send

from dmp.wire import protocol
from dmp.wire.protocol import Status
from tests.unit._scheduler_shapes import shape

pytestmark = pytest.mark.timeout(60)


def _results_before_the_split(s: Scheduler, peer: str, items: list[list[Any]], frames: list[Any]) -> list[Command]:
    """Scheduler.results as it was before take_results/settle (main at 61e960f): the reference."""
    worker = s.workers.get(peer)
    if worker is None:
        return []
    out: dict[str, tuple[list[list[Any]], list[Any]]] = {}
    pos = 0
    cmds: list[Command] = []
    run_total = 0.0
    assigned, clients, totals = worker.assigned, s.clients, s.totals
    done = 0
    for key, attempt, status, nframes, run_s, info in items:
        start = pos
        pos += nframes
        task = assigned.get(key)
        if task is None or task.attempt != attempt:
            continue
        del assigned[key]
        if task.held is not None:
            s._unhold(task)
        done += 1
        run_total += float(run_s)
        job = task.job
        client = clients.get(job.client)
        s.tasks.pop(key, None)
        job.outstanding -= 1
        job.timed = True
        failed = status != Status.OK
        totals.done += 1
        totals.failed += failed
        if client is None:
            continue
        s._release(client, peer)
        client.done += 1
        client.failed += failed
        if job.job_id in client.jobs:
            batch = out.get(client.peer)
            if batch is None:
                batch = out[client.peer] = ([], [])
            batch[0].append([job.job_id, task.task_id, status, nframes, info])
            batch[1].extend(frames[start:pos])
            if job.ended and job.outstanding <= 0:
                cmds += s._drop(client, job)
    worker.done += done
    s.tasks_done += done
    s.hungry.touch(worker)
    if items:
        mean = run_total / len(items)
        est = s.est_run_s
        est = mean if est is None else est + scheduler_mod.EWMA_ALPHA * (mean - est)
        s.est_run_s = est
        s.in_flight = max(1, min(scheduler_mod.MAX_IN_FLIGHT, math.ceil(scheduler_mod.PREFETCH_SECONDS / max(est, 1e-7))))
    sends: list[Command] = [Send(to, protocol.JobResults(its), frs) for to, (its, frs) in out.items()]
    if cmds:
        sends += cmds
    if s._ready:
        sends += s.schedule()
    return sends


def _books(s: Scheduler) -> Any:
    return (
        s.queued_total,
        sorted(s.tasks),
        s.tasks_done,
        s.est_run_s,
        s.in_flight,
        (s.totals.done, s.totals.failed, s.totals.retried),
        {w.peer: (list(w.assigned), w.tasks_left, w.done, w.doomed) for w in s.workers.values()},
        {
            c.peer: (c.queued, c.running, dict(c.on), c.done, c.failed, sorted(c.jobs),
                     [(j.outstanding, j.timed, sorted(j.holders)) for j in c.jobs.values()])
            for c in s.clients.values()
        },
        sorted(s.hungry.idle),
        list(s.hungry.open),
        s._unsettled,
    )


class Twin:
    """``old`` answers TaskDone as before the split, ``new`` in two halves; every other call alike."""

    def __init__(self) -> None:
        self.old = Scheduler()
        self.new = Scheduler()
        self.results = 0  # JobResults sent by take_results

    def call(self, name: str, *args: Any) -> list[Command]:
        if name == "results":
            a = _results_before_the_split(self.old, *args)
            first = self.new.take_results(*args)
            self.results += len(first)
            assert all(isinstance(c, Send) and isinstance(c.msg, protocol.JobResults) for c in first)
            b = first + self.new.settle()
        else:
            a = getattr(self.old, name)(*args) or []
            b = getattr(self.new, name)(*args) or []
        assert shape(a) == shape(b), name
        assert _books(self.old) == _books(self.new), name
        return b


def test_two_halves_send_and_book_what_results_did() -> None:
    sent = 0
    for seed in range(80):
        sent += _history(Twin(), random.Random(seed))
    assert sent >= 300  # many results went out through the split, and nothing changed


def _history(t: Twin, rng: random.Random) -> int:
    t.call("add_client", "A")
    t.call("add_client", "B", 1 if rng.random() < 0.3 else 0)
    jobs = {"A": 0, "B": 0}
    next_id = 0
    workers = 0
    old_items: list[tuple[str, list[Any]]] = []  # TaskDone items already answered: sent again, they are stale
    for _ in range(150):
        op = rng.random()
        live = sorted(t.new.workers)
        if op < 0.08 or not live:
            workers += 1
            t.call("add_worker", f"w{workers}", "n", 100 + workers, rng.choice([0, 0, 3]))
        elif op < 0.16:
            client = rng.choice("AB")
            jobs[client] += 1
            t.call("define_job", client, jobs[client], [b"run"], rng.choice([0, 1]))
        elif op < 0.45:
            client = rng.choice("AB")
            if not jobs[client]:
                continue
            n = 1 if rng.random() < 0.7 else rng.randint(2, 6)
            tasks = [(next_id + i, [b"t%d" % (next_id + i)]) for i in range(n)]
            next_id += n
            t.call("submit", client, rng.randint(1, jobs[client]), tasks)
        elif op < 0.78:
            w = t.new.workers[rng.choice(live)]
            if rng.random() < 0.1 and old_items:  # a duplicate, or a TaskDone from the wrong worker
                peer, items = rng.choice(old_items)
                t.call("results", rng.choice([peer, w.peer]), items, [b"r"] * len(items))
                continue
            if not w.assigned:
                continue
            chosen = list(w.assigned.items())[: rng.randint(1, len(w.assigned))]
            items = [[k, task.attempt, int(rng.choice([Status.OK, Status.OK, Status.RAISED])), 1,
                      rng.choice([1e-5, 0.01]), ""] for k, task in chosen]
            if rng.random() < 0.1:
                items[0][1] += 1  # an attempt this worker was never given: stale
            old_items.append((w.peer, items))
            t.call("results", w.peer, items, [b"r%d" % it[0] for it in items])
        elif op < 0.86:
            client = rng.choice("AB")
            if jobs[client]:
                t.call(rng.choice(["end_job", "cancel_job"]), client, rng.randint(1, jobs[client]))
        elif op < 0.95:
            w = t.new.workers[rng.choice(live)]
            running = next(iter(w.assigned)) if w.assigned and rng.random() < 0.7 else -1
            t.call("remove_worker", w.peer, -9, running)
        else:
            t.call("spared", rng.choice(live))
    return t.results


def _one_apply() -> tuple[Scheduler, int]:
    s = Scheduler()
    s.add_client("A")
    s.add_worker("w1", "n", 101, 0)
    s.define_job("A", 1, [b"run"], 0)
    (sent,) = s.submit("A", 1, [(7, [b"t"])])
    assert isinstance(sent.msg, protocol.Dispatch)
    return s, sent.msg.tasks[0][0]


def test_the_result_goes_out_before_its_books_and_the_books_follow() -> None:
    s, key = _one_apply()
    (res,) = s.take_results("w1", [[key, 0, int(Status.OK), 1, 1e-4, ""]], [b"49"])
    assert isinstance(res, Send) and res.to == "A" and res.frames == [b"49"]
    assert res.msg.items == [[1, 7, int(Status.OK), 1, ""]]  # type: ignore[attr-defined]
    assert key not in s.workers["w1"].assigned  # taken at once: the same result again is stale
    assert s._unsettled is not None
    assert s.settle() == []
    assert s._unsettled is None and s.settle() == []  # settled once
    assert s.tasks == {} and s.tasks_done == 1 and s.clients["A"].running == 0 and s.clients["A"].on == {}
    assert s.est_run_s == 1e-4 and "w1" in s.hungry.idle


def test_a_duplicate_taskdone_sends_nothing() -> None:
    s, key = _one_apply()
    items = [[key, 0, int(Status.OK), 1, 1e-4, ""]]
    assert len(s.take_results("w1", items, [b"49"])) == 1
    s.settle()
    assert s.take_results("w1", items, [b"49"]) == []
    assert s.settle() == [] and s.tasks_done == 1 and s.totals.done == 1


def test_a_taskdone_from_a_worker_not_holding_the_task_sends_nothing() -> None:
    s, key = _one_apply()
    s.add_worker("w2", "n", 102, 0)
    assert s.take_results("w2", [[key, 0, int(Status.OK), 1, 1e-4, ""]], [b"49"]) == []
    s.settle()
    assert key in s.workers["w1"].assigned and s.tasks_done == 0


def test_a_taskdone_of_a_job_cancelled_before_it_arrives_sends_nothing() -> None:
    s, key = _one_apply()
    cancel = s.cancel_job("A", 1)
    assert [type(c.msg).__name__ for c in cancel if isinstance(c, Send)] == ["ForgetJobs", "JobResults"]  # CANCELLED
    assert [c.worker for c in cancel if isinstance(c, Kill)] == ["w1"]
    assert s.take_results("w1", [[key, 0, int(Status.OK), 1, 1e-4, ""]], [b"49"]) == []
    assert s.settle() == [] and s.tasks_done == 0


def test_the_last_result_of_an_ended_job_goes_before_its_forgetjobs() -> None:
    s, key = _one_apply()
    assert s.end_job("A", 1) == []
    first = s.take_results("w1", [[key, 0, int(Status.OK), 1, 1e-4, ""]], [b"49"])
    assert [type(c.msg).__name__ for c in first if isinstance(c, Send)] == ["JobResults"]
    then = s.settle()
    assert [(c.to, type(c.msg).__name__) for c in then if isinstance(c, Send)] == [("w1", "ForgetJobs")]
    assert 1 not in s.clients["A"].jobs


def test_results_is_both_halves_and_refuses_to_skip_a_settle() -> None:
    s, key = _one_apply()
    s.take_results("w1", [[key, 0, int(Status.OK), 1, 1e-4, ""]], [b"49"])
    with pytest.raises(AssertionError):
        s.take_results("w1", [], [])
