"""Cancelling a job (CancelJob, a client gone) as a pure state machine: a
worker is killed only when the task it runs (its oldest) is the job's; the
job's tasks queued behind another job's task are withdrawn with ForgetJobs,
and that other task, another client's, runs on untouched."""

from __future__ import annotations

import pytest
from dmp_server.scheduler import Kill
from test_scheduler import Harness, dispatched, sends_of

from dmp.wire import protocol
from dmp.wire.protocol import Status

pytestmark = pytest.mark.timeout(30)


def _queued_behind(h: Harness) -> tuple[int, int]:
    """One worker w1: B's task running, A's task queued behind it. Returns their keys."""
    h.client("A")
    h.client("B")
    h.worker("w1")
    h.job("A", 1)
    h.job("B", 1)
    h.submit("B", 1, [1])
    h.submit("A", 1, [1])
    (b_key, *_), (a_key, *_) = h.given["w1"]
    assert h.s.tasks[b_key].job.client == "B" and h.s.tasks[a_key].job.client == "A"
    return b_key, a_key


@pytest.mark.parametrize("how", ["cancel", "client gone"])
def test_a_task_queued_behind_another_clients_task_is_withdrawn_not_killed(how: str) -> None:
    h = Harness()
    b_key, a_key = _queued_behind(h)
    a_job = h.s.clients["A"].jobs[1].key
    cmds = h.apply(h.s.cancel_job("A", 1) if how == "cancel" else h.s.remove_client("A"))
    assert h.kills == []
    assert not h.s.workers["w1"].doomed
    (forget,) = sends_of(cmds, protocol.ForgetJobs)
    assert forget.to == "w1" and forget.msg.jobs == [a_job]
    assert list(h.s.workers["w1"].assigned) == [b_key]
    assert a_key not in h.s.tasks
    if how == "cancel":
        assert h.s.clients["A"].running == 0 and h.s.clients["A"].on == {}
        ((item, _),) = h.results_for("A")
        assert item[:3] == [1, -1, Status.CANCELLED]
    # B's task completes on w1, first attempt, and reaches B.
    h.given["w1"] = type(h.given["w1"])(t for t in h.given["w1"] if t[0] != a_key)
    h.complete("w1")
    ((item, frames),) = h.results_for("B")
    assert item[:3] == [1, 1, Status.OK] and frames == [b"result-of-B:1:1"]
    assert h.s.totals.retried == 0 and h.s.totals.done == 1
    assert h.s.clients["B"].running == 0 and h.s.workers["w1"].assigned == {}


def test_a_withdrawn_task_that_ran_anyway_has_its_result_dropped() -> None:
    h = Harness()
    _b_key, _a_key = _queued_behind(h)
    h.apply(h.s.cancel_job("A", 1))
    h.results_for("A")
    h.complete("w1")  # the worker ran A's task before it read ForgetJobs
    assert [i[1] for i, _ in h.results_for("B")] == [1]
    assert h.results_for("A") == []
    assert h.s.tasks_done == 1 and h.s.totals.done == 1
    assert h.s.workers["w1"].assigned == {}


def test_a_worker_running_the_cancelled_jobs_task_is_killed() -> None:
    h = Harness()
    h.client("A")
    h.client("B")
    h.worker("w1")
    h.job("A", 1)
    h.job("B", 1)
    h.submit("A", 1, [1])
    h.submit("B", 1, [1])  # queued on w1 behind A's running task
    (_a_key, *_), (b_key, *_) = h.given["w1"]
    cmds = h.apply(h.s.cancel_job("A", 1))
    assert h.kills == ["w1"] and h.s.workers["w1"].doomed
    assert "w1" not in dispatched(cmds)
    assert list(h.s.workers["w1"].assigned) == [b_key]
    # B's task dies with w1 uncharged (it had not started) and runs elsewhere.
    h.die("w1", running=-1)
    h.worker("w2")
    assert [t[0] for t in h.given["w2"]] == [b_key]
    assert h.s.tasks[b_key].attempt == 0


def test_withdrawing_frees_credit_for_the_next_task() -> None:
    h = Harness()
    h.client("A")
    h.client("B")
    h.worker("w1")
    h.job("A", 1)
    h.job("B", 1)
    h.submit("B", 1, [0])
    h.complete("w1", run_s=0.001)  # B's tasks are known short: w1 may take two
    h.submit("B", 1, [1])
    h.submit("A", 1, [1])
    (_b_key, *_), (a_key, *_) = h.given["w1"]
    h.submit("B", 1, [2, 3])  # w1 is full (two in flight): these wait
    assert h.s.queued() == 2
    cmds = h.apply(h.s.cancel_job("A", 1))
    # A's slot on w1 went to B's next task.
    ((key, *_),) = dispatched(cmds)["w1"]
    assert h.s.tasks[key].job.client == "B" and h.s.tasks[key].task_id == 2
    assert h.s.queued() == 1 and h.s.clients["B"].running == 2
    assert a_key not in h.s.workers["w1"].assigned


def test_a_task_killed_by_a_cancel_it_did_not_belong_to_is_not_charged() -> None:
    """The worker had finished A's task (its result still batched there) and ran B's
    when A's job was cancelled: the manager, taking A's for the running one, killed it.
    B's task goes back uncharged, even with no retries left."""
    h = Harness()
    h.client("A")
    h.client("B")
    h.worker("w1")
    h.job("A", 1)
    h.job("B", 1, max_retries=0)
    h.submit("A", 1, [1])
    h.submit("B", 1, [1])
    (_a_key, *_), (b_key, *_) = h.given["w1"]
    h.apply(h.s.cancel_job("A", 1))
    assert h.kills == ["w1"]
    h.die("w1", exitcode=-9, running=b_key)
    assert h.results_for("B") == []
    assert h.s.totals.retried == 0
    h.worker("w2")
    assert [t[0] for t in h.given["w2"]] == [b_key] and h.s.tasks[b_key].attempt == 0
    h.complete("w2")
    assert [i[:3] for i, _ in h.results_for("B")] == [[1, 1, Status.OK]]


# --- the node decides: a Kill carries the job's keys, a worker that moved on is spared ---


def _a_then_b(h: Harness, *, b_retries: int = 3) -> tuple[int, int]:
    """One worker w1 given A's task, then B's behind it. Returns their keys."""
    h.client("A")
    h.client("B")
    h.worker("w1", node="node-a")
    h.job("A", 1)
    h.job("B", 1, max_retries=b_retries)
    h.submit("A", 1, [1])
    h.submit("B", 1, [1])
    (a_key, *_), (b_key, *_) = h.given["w1"]
    return a_key, b_key


def test_a_kill_spares_the_tasks_the_worker_was_given_after_the_cancelled_one() -> None:
    """Only a slot showing B's task (given after A's) proves A's over; nothing, or A's, dies."""
    h = Harness()
    _a_key, b_key = _a_then_b(h)
    cmds = h.apply(h.s.cancel_job("A", 1))
    (kill,) = [c for c in cmds if isinstance(c, Kill)]
    assert kill.worker == "w1" and kill.spare == [b_key]
    assert h.s.workers["w1"].doomed == 1


def test_a_worker_spared_by_its_node_runs_on_and_its_task_is_not_retried() -> None:
    """The worker had finished A's task (its result still batched there) and ran B's
    when A was cancelled: its node saw B's key in the slot and spared it. B's task
    completes on w1, first attempt, no death counted, and w1 takes work again."""
    h = Harness()
    a_key, b_key = _a_then_b(h, b_retries=0)
    h.apply(h.s.cancel_job("A", 1))
    assert h.kills == ["w1"] and "w1" not in h.s.hungry.idle and "w1" not in h.s.hungry.open
    h.job("B", 2)
    h.submit("B", 2, [1])  # queued: a doomed worker takes nothing
    assert h.s.queued() == 1
    cmds = h.apply(h.s.spared("w1", "node-a"))
    assert h.s.workers["w1"].doomed == 0 and h.s.queued() == 0
    ((b2_key, *_),) = dispatched(cmds)["w1"]
    assert h.s.tasks[b2_key].job.job_id == 2
    # One batch: A's result (stale: dropped), B's task (first attempt), B's next.
    assert [t[0] for t in h.given["w1"]] == [a_key, b_key, b2_key]
    h.complete("w1")
    assert [i[:3] for i, _ in h.results_for("B")] == [[1, 1, Status.OK], [2, 1, Status.OK]]
    assert [i[1] for i, _ in h.results_for("A")] == [-1]  # only the CANCELLED answer
    assert h.s.totals.retried == 0 and h.s.totals.workers_lost == 0
    assert h.s.workers["w1"].assigned == {} and h.s.workers["w1"].done == 2


def test_only_the_workers_own_node_may_spare_it() -> None:
    h = Harness()
    _a_then_b(h)
    h.apply(h.s.cancel_job("A", 1))
    assert h.apply(h.s.spared("w1", "node-b")) == []
    assert h.s.workers["w1"].doomed == 1
    assert h.apply(h.s.spared("nobody", "node-a")) == []


def test_a_worker_stays_doomed_while_another_kill_of_it_is_unanswered() -> None:
    """Two cancels in a row each sent a Kill: the first spared says nothing of the second."""
    h = Harness()
    h.client("A")
    h.client("B")
    h.client("C")
    h.worker("w1", node="node-a")
    for c in "ABC":
        h.job(c, 1)
    h.submit("A", 1, [1])
    h.submit("B", 1, [1])
    h.submit("C", 1, [1])  # queued: w1 holds two
    h.apply(h.s.cancel_job("A", 1))
    h.apply(h.s.cancel_job("B", 1))  # B's task is w1's oldest now
    assert h.kills == ["w1", "w1"] and h.s.workers["w1"].doomed == 2
    assert "w1" not in dispatched(h.apply(h.s.spared("w1", "node-a")))
    assert h.s.workers["w1"].doomed == 1
    # The second Kill did kill it (it ran B's task): C's task goes elsewhere, uncharged.
    h.die("w1", running=-1)
    h.worker("w2")
    assert [h.s.tasks[t[0]].job.client for t in h.given["w2"]] == ["C"]
    assert h.s.totals.retried == 0


# --- Process.terminate/kill (SignalJob): signal the running worker, or withdraw ------------


def _process_given_to_w1(h: Harness) -> int:
    """Client A's one-task job (a cluster Process) given to worker w1; its task key."""
    h.client("A")
    h.worker("w1")
    h.job("A", 1)
    h.submit("A", 1, [0])
    ((key, *_),) = h.given["w1"]
    return key


def test_signal_job_signals_the_worker_running_it_whatever_it_runs() -> None:
    """The process's task runs on w1 (TaskStarted came): w1 gets the signal itself (no task
    keys: unconditional; a process that ignores SIGTERM lives on)."""
    h = Harness()
    key = _process_given_to_w1(h)
    h.s.tasks[key].started = True  # what routing does on TaskStarted
    cmds = h.s.signal_job("A", 1, 15)
    assert [(c.worker, c.spare, c.signum) for c in cmds if isinstance(c, Kill)] == [("w1", [], 15)]
    assert not sends_of(cmds, protocol.JobResults), "a process that runs must end by its worker's exit"
    assert not h.s.workers["w1"].doomed


def test_signal_job_withdraws_a_process_no_worker_has_yet() -> None:
    """Every slot busy: the process's task is queued; it is withdrawn (it never runs) and
    answered CANCELLED. The client cannot tell this case apart itself: its JobTaskStarted
    may come after what the started process did through other paths."""
    h = Harness()
    h.client("A")
    h.client("B")
    h.worker("w1", max_tasks=0)
    h.job("B", 1)
    h.submit("B", 1, range(200))  # fills w1's credit
    h.job("A", 1)
    h.submit("A", 1, [0])
    assert all(t.job.client == "B" for t in h.s.workers["w1"].assigned.values()), "A's task must still be queued"
    h.apply(h.s.signal_job("A", 1, 15))
    assert h.kills == []
    ((item, _),) = h.results_for("A")
    assert item[:3] == [1, -1, Status.CANCELLED]
    assert not h.s.clients["A"].jobs or 1 not in h.s.clients["A"].jobs or not h.s.clients["A"].jobs[1].pending


def test_signal_job_of_an_unknown_or_finished_job_does_nothing() -> None:
    h = Harness()
    _process_given_to_w1(h)
    h.complete("w1")
    assert h.s.signal_job("A", 1, 15) == []
    assert h.s.signal_job("A", 99, 15) == []
    assert h.s.signal_job("nobody", 1, 15) == []


def test_signal_job_before_the_worker_started_it_cancels_it() -> None:
    """Given to w1 but not announced: a signal now must not let a killed worker's task be
    requeued (uncharged) to run elsewhere; the job is cancelled: w1, with no other task to
    spare, is killed whatever it runs, and CANCELLED answers the client."""
    h = Harness()
    key = _process_given_to_w1(h)
    cmds = h.apply(h.s.signal_job("A", 1, 15))
    assert [(c.worker, c.spare, c.signum) for c in cmds if isinstance(c, Kill)] == [("w1", [], 9)]
    ((item, _),) = h.results_for("A")
    assert item[:3] == [1, -1, Status.CANCELLED]
    assert key not in h.s.tasks, "the task must never run again"


def test_a_process_never_waits_behind_another_task_so_its_cancel_kills_or_drops_it() -> None:
    """Why a terminated Process cannot run on: its task (idle_only) goes only to an idle
    worker, alone, never behind another job's task (whose worker a cancel would spare).
    Terminated before its TaskStarted, it is dropped from the queue, or its worker is
    killed whatever it runs (no spare)."""
    h = Harness()
    h.client("A")
    h.client("B")
    h.worker("w1")
    h.job("B", 1)
    h.submit("B", 1, [1])
    for job in (1, 2):
        assert h.apply(h.s.define_job("A", job, [b"process"], 0, idle_only=True)) == []
        h.submit("A", job, [0])
    assert [h.s.tasks[t[0]].job.client for t in h.given["w1"]] == ["B"], "a Process queued behind B's task"
    h.apply(h.s.signal_job("A", 1, 15))  # queued: dropped
    assert h.kills == [] and [i[:3] for i, _ in h.results_for("A")] == [[1, -1, Status.CANCELLED]]
    h.complete("w1")
    ((key, *_),) = h.given["w1"]
    assert h.s.tasks[key].job.job_id == 2 and list(h.s.workers["w1"].assigned) == [key]
    kills = [(c.worker, c.spare, c.signum) for c in h.apply(h.s.signal_job("A", 2, 15)) if isinstance(c, Kill)]
    assert kills == [("w1", [], 9)]
