"""The hungry index (dmp_server.hungry) and the scheduler's use of it: no dispatch scans every worker."""

from __future__ import annotations

from typing import Any

import pytest
from dmp_server import placement
from dmp_server.hungry import Hungry
from dmp_server.placement import DISPATCH_BATCH
from dmp_server.records import Worker
from dmp_server.scheduler import Scheduler, Send

from dmp.wire import protocol
from dmp.wire.protocol import Status

pytestmark = pytest.mark.timeout(30)


def test_idle_workers_come_first_the_first_joined_first() -> None:
    h = Hungry()
    a, b, c = Worker("a", "n", 1, -1), Worker("b", "n", 2, -1), Worker("c", "n", 3, -1)
    b.assigned[1] = object()  # type: ignore[assignment]
    for w in (a, b, c):
        h.touch(w)
    assert len(h) == 3
    assert [h.pop(), h.pop(), h.pop(), h.pop()] == [a, c, b, None]
    b.assigned.clear()
    for w in (c, b, a):  # idle again, in another order: still taken in join order
        h.touch(w)
    assert [h.pop(), h.pop(), h.pop(), h.pop()] == [a, b, c, None]


def test_touch_moves_a_worker_between_idle_and_open_and_drops_the_doomed() -> None:
    h = Hungry()
    w = Worker("w", "n", 1, -1)
    h.touch(w)
    assert list(h.idle) == ["w"] and not h.open
    w.assigned[7] = object()  # type: ignore[assignment]
    h.touch(w)
    assert list(h.open) == ["w"] and not h.idle
    h.touch(w)  # twice: still once
    assert len(h) == 1
    w.doomed = True
    h.touch(w)
    assert len(h) == 0
    done = Worker("d", "n", 2, 0)  # maxtasksperchild used up
    h.touch(done)
    assert len(h) == 0


def test_put_back_goes_behind_the_others_and_discard_forgets() -> None:
    h = Hungry()
    ws = [Worker(str(i), "n", i, -1) for i in range(3)]
    for w in ws:
        h.touch(w)
    for w in ws:
        w.assigned[1] = object()  # type: ignore[assignment]
        h.touch(w)  # open now: taken in arrival order
    first = h.pop()
    h.put_back([first])  # type: ignore[list-item]
    assert [h.pop() for _ in range(3)] == [ws[1], ws[2], ws[0]]
    h.touch(ws[1])
    h.discard("1")
    h.discard("nobody")
    assert len(h) == 0


class CountingScheduler(Scheduler):
    """Counts how many workers a schedule() looks at (credit is asked once per visit)."""

    visits = 0

    def credit(self, worker: Worker) -> int:
        self.visits += 1
        return super().credit(worker)


def _dispatched(cmds: list[Any]) -> dict[str, list[list[Any]]]:
    return {c.to: c.msg.tasks for c in cmds if isinstance(c, Send) and isinstance(c.msg, protocol.Dispatch)}


def test_results_of_one_worker_among_a_thousand_busy_ones_visit_only_a_few(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement, "PROBE_WORKERS", 10**6)  # the new job goes everywhere at once
    s = CountingScheduler()
    s.add_client("c")
    s.define_job("c", 1, [], 3)
    workers = [f"w{i}" for i in range(1000)]
    given: dict[str, list[list[Any]]] = {}
    for w in workers:
        s.add_worker(w, "n", 1, 0)
    # Enough tasks to fill every worker's credit (2 each before any run time is
    # known), and more waiting behind them.
    for cmd in s.submit("c", 1, [(i, [b"x"]) for i in range(2000 + 500)]):
        if isinstance(cmd, Send) and isinstance(cmd.msg, protocol.Dispatch):
            given.setdefault(cmd.to, []).extend(cmd.msg.tasks)
    assert all(len(given[w]) == 2 for w in workers)
    s.visits = 0
    key, _job, attempt, _n = given["w500"][0]
    cmds = s.results("w500", [[key, attempt, int(Status.OK), 0, 1e-4, ""]], [])  # room for 20
    assert set(_dispatched(cmds)) == {"w500"}  # its credit refilled, nobody else's changed
    assert s.visits <= 3, f"schedule() looked at {s.visits} workers for one worker's results"


def test_two_tasks_on_two_idle_workers_still_run_side_by_side() -> None:
    s = Scheduler()
    s.add_client("c")
    s.define_job("c", 1, [], 3)
    s.add_worker("a", "n", 1, 0)
    s.add_worker("b", "n", 2, 0)
    spread = _dispatched(s.submit("c", 1, [(0, [b"x"]), (1, [b"y"])]))
    assert {w: len(t) for w, t in spread.items()} == {"a": 1, "b": 1}


def test_short_tasks_go_out_in_batches_not_one_per_idle_worker() -> None:
    """Once tasks are known to be short, a worker takes DISPATCH_BATCH at once
    (within its credit) rather than one each over a thousand idle workers."""
    s = Scheduler()
    s.add_client("c")
    s.define_job("c", 1, [], 3)
    for i in range(1000):
        s.add_worker(f"w{i}", "n", 1, 0)
    (first,) = _dispatched(s.submit("c", 1, [(0, [b"x"])])).items()
    key, _job, attempt, _n = first[1][0]
    s.results(first[0], [[key, attempt, int(Status.OK), 0, 1e-6, ""]], [])  # a microsecond task
    n = DISPATCH_BATCH + DISPATCH_BATCH // 2
    spread = _dispatched(s.submit("c", 1, [(i, [b"x"]) for i in range(1, n + 1)]))
    assert sorted(len(t) for t in spread.values()) == [DISPATCH_BATCH // 2, DISPATCH_BATCH]


def test_a_new_job_after_short_tasks_is_spread_until_its_own_tasks_finish() -> None:
    """The run time known is an earlier job's: four tasks of a new job on four
    idle workers run side by side (they may wait on each other, or be long),
    not in one worker's batch."""
    s = Scheduler()
    s.add_client("c")
    s.define_job("c", 1, [], 3)
    for i in range(4):
        s.add_worker(f"w{i}", "n", i, 0)
    (first,) = _dispatched(s.submit("c", 1, [(0, [b"x"])])).items()
    key, _job, attempt, _n = first[1][0]
    s.results(first[0], [[key, attempt, int(Status.OK), 0, 1e-6, ""]], [])  # a microsecond task
    s.define_job("c", 2, [], 3)
    spread = _dispatched(s.submit("c", 2, [(i, [b"x"]) for i in range(4)]))
    assert sorted(len(t) for t in spread.values()) == [1, 1, 1, 1]
