"""A job none of whose tasks has finished (its run time unknown) as a pure state machine:
it is spread, one Dispatch per worker, over at most PROBE_WORKERS workers until a task
of it finishes (then short tasks go out in batches) or PROBE_S passes (long tasks: then
every idle worker takes one). So a job of tiny tasks costs the same messages per task
on a thousand workers as on ten, and no schedule() looks at every worker meanwhile."""

from __future__ import annotations

from typing import Any

import pytest
from dmp_server.hungry import Hungry
from dmp_server.placement import DISPATCH_BATCH, DISPATCH_BYTES, PROBE_S, PROBE_WORKERS
from dmp_server.records import Worker
from dmp_server.scheduler import Scheduler, Send

from dmp.wire import protocol
from dmp.wire.protocol import Status

pytestmark = pytest.mark.timeout(30)


class CountedHungry(Hungry):
    """The hungry index, counting the workers taken from it (each one a visit)."""

    __slots__ = ("visits",)

    def __init__(self) -> None:
        super().__init__()
        self.visits = 0

    def pop(self) -> Worker | None:
        worker = super().pop()
        self.visits += worker is not None
        return worker


class Clocked(Scheduler):
    """A scheduler with a clock the test moves, counting the workers each schedule() visits."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 100.0
        self.clock = lambda: self.now
        self.hungry = self.counted = CountedHungry()

    @property
    def visits(self) -> int:
        return self.counted.visits

    @visits.setter
    def visits(self, n: int) -> None:
        self.counted.visits = n


def dispatches(cmds: list[Any]) -> dict[str, list[list[Any]]]:
    out: dict[str, list[list[Any]]] = {}
    for c in cmds:
        if isinstance(c, Send) and isinstance(c.msg, protocol.Dispatch):
            assert c.to not in out, "two Dispatches to one worker from one event"
            out[c.to] = c.msg.tasks
    return out


def cluster(workers: int) -> Clocked:
    s = Clocked()
    s.add_client("c")
    s.define_job("c", 1, [b"runner"], 3)
    for i in range(workers):
        s.add_worker(f"w{i}", "n", 1, 0)
    return s


def submit(s: Scheduler, ids: range) -> list[Any]:
    return s.submit("c", 1, [(i, [b"x"]) for i in ids])


def finish(s: Scheduler, worker: str, tasks: list[list[Any]], run_s: float) -> list[Any]:
    items = [[key, attempt, int(Status.OK), 0, run_s, ""] for key, _job, attempt, _n in tasks]
    return s.results(worker, items, [])


def test_a_worker_takes_an_unknown_job_in_one_dispatch_until_a_task_of_it_finishes() -> None:
    s = cluster(2)
    first = dispatches(submit(s, range(2)))
    assert {w: len(t) for w, t in first.items()} == {"w0": 1, "w1": 1}
    # Both have credit for another (a task queued behind the running one), but the job's
    # run time is unknown: its tasks wait at the manager, not behind each other.
    s.visits = 0
    assert dispatches(submit(s, range(2, 6))) == {}
    assert s.queued() == 4
    assert s.visits == 1  # the second submit stopped at the first worker it could not use
    # One finishes, quickly: the job is timed, its tasks now go in batches.
    after = dispatches(finish(s, "w0", first["w0"], 1e-5))
    assert sum(len(t) for t in after.values()) == 4 and s.queued() == 0


def test_a_job_of_tiny_tasks_on_a_thousand_workers_costs_few_dispatches() -> None:
    s = cluster(1000)
    given: dict[str, list[list[Any]]] = {}
    for start in range(0, 4096, 64):  # a client's credit of tasks, in the feeder's batches
        s.visits = 0
        for w, tasks in dispatches(submit(s, range(start, start + 64))).items():
            assert w not in given, "a second Dispatch of the unknown job to one worker"
            given[w] = tasks
        assert s.visits <= 64 + 1, f"one submit visited {s.visits} workers"
    assert len(given) == PROBE_WORKERS  # the probe: one task each, the rest waits
    assert s.queued() == 4096 - PROBE_WORKERS
    w, tasks = next(iter(given.items()))
    s.visits = 0
    batched = dispatches(finish(s, w, tasks, 1e-6))  # a microsecond task: the job is timed
    sizes = sorted(len(t) for t in batched.values())
    assert sum(sizes) == 4096 - PROBE_WORKERS
    assert sizes[0] >= DISPATCH_BATCH or len(sizes) == 1 or sizes[1] >= DISPATCH_BATCH
    assert len(batched) <= -(-(4096 - PROBE_WORKERS) // DISPATCH_BATCH)


def test_after_the_probe_time_a_long_job_spreads_over_every_idle_worker() -> None:
    s = cluster(200)
    first = dispatches(submit(s, range(150)))
    assert len(first) == PROBE_WORKERS and all(len(t) == 1 for t in first.values())
    s.now += PROBE_S / 2
    assert dispatches(s.schedule()) == {}  # still probing: nothing has finished, nothing more goes
    s.now += PROBE_S
    spread = dispatches(s.schedule())  # as the manager's beat does
    assert set(spread).isdisjoint(first) and len(spread) == 150 - PROBE_WORKERS
    assert all(len(t) == 1 for t in spread.values())  # long tasks: one each, none stacked
    assert s.queued() == 0


def test_a_job_with_fewer_tasks_than_the_probe_is_spread_at_once() -> None:
    s = cluster(100)
    got = dispatches(submit(s, range(PROBE_WORKERS - 4)))
    assert len(got) == PROBE_WORKERS - 4 and s.queued() == 0


def test_another_clients_known_job_still_flows_while_one_probes() -> None:
    s = cluster(100)
    s.add_client("b")
    s.define_job("b", 1, [b"r"], 3)
    b_first = dispatches(s.submit("b", 1, [(0, [b"y"])]))
    ((bw, b_tasks),) = b_first.items()
    finish(s, bw, b_tasks, 1e-5)  # b's job is timed
    probing = dispatches(submit(s, range(1000)))  # c's job probes on PROBE_WORKERS workers, the rest waits
    assert len(probing) == PROBE_WORKERS and s.queued() > 0
    b_next = dispatches(s.submit("b", 1, [(i, [b"y"]) for i in range(1, 40)]))
    assert sum(len(t) for t in b_next.values()) == 39  # b is not held up by c's probe


def test_an_unknown_jobs_share_split_into_several_dispatches_still_goes_whole() -> None:
    """A worker's share of large tasks goes as several Dispatches (DISPATCH_BYTES) in one
    visit: all of them count as its one turn of the unknown job, and the next worker gets its own."""
    s = cluster(2)
    big = bytes(DISPATCH_BYTES)
    cmds = s.submit("c", 1, [(i, [b"x", big]) for i in range(4)])
    per_worker: dict[str, int] = {}
    for c in cmds:
        if isinstance(c, Send) and isinstance(c.msg, protocol.Dispatch):
            assert len(c.msg.tasks) == 1  # a MiB each: one to a Dispatch
            per_worker[c.to] = per_worker.get(c.to, 0) + 1
    assert per_worker == {"w0": 2, "w1": 2} and s.queued() == 0


def test_single_task_submits_keep_to_the_probe_too() -> None:
    """apply_async-like submits of one task each, nothing queued: the direct path
    (Placement.give_now) starts the probe's clock and stops at PROBE_WORKERS as schedule() does."""
    s = cluster(PROBE_WORKERS + 10)
    for i in range(PROBE_WORKERS + 5):
        submit(s, range(i, i + 1))
    job = s.clients["c"].jobs[1]
    assert len(job.holders) == PROBE_WORKERS and job.first_out == s.now
    assert s.queued() == 5
    s.now += PROBE_S
    assert len(dispatches(s.schedule())) == 5 and s.queued() == 0
