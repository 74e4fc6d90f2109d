"""Idle-only jobs (a remote Process: DefineJob.idle_only) as a pure state machine:
each task goes to an idle worker only, and nothing queues behind it, so
withdrawing or signalling a Process never touches another task."""

from __future__ import annotations

import pytest
from test_scheduler import Harness

from dmp.wire.protocol import Status

pytestmark = pytest.mark.timeout(30)


def _idle_only(h: Harness, client: str, job: int) -> None:
    assert (
        h.apply(h.s.define_job(client, job, [b"runner-%d" % job], 0, 0.0, None, idle_only=True))
        == []
    )


def test_an_idle_only_task_waits_for_an_idle_worker_not_behind_a_busy_one() -> None:
    h = Harness()
    h.client("c")
    h.job("c", 1)
    _idle_only(h, "c", 2)
    h.worker("w1")
    h.submit("c", 1, [0])  # w1 busy with a pool task (it could hold one more)
    h.submit("c", 2, [0])
    assert [t[1] for t in h.given["w1"]] == [h.s.clients["c"].jobs[1].key]
    assert h.s.queued() == 1  # the Process waits
    h.worker("w2")  # an idle worker: the Process starts there at once
    assert [t[1] for t in h.given["w2"]] == [h.s.clients["c"].jobs[2].key]


def test_nothing_queues_behind_an_idle_only_task() -> None:
    h = Harness()
    h.client("c")
    _idle_only(h, "c", 1)
    h.job("c", 2)
    h.worker("w1")
    h.submit("c", 1, [0])
    h.submit("c", 2, [0, 1])
    assert len(h.given["w1"]) == 1  # the Process alone
    assert h.s.queued() == 2
    h.complete("w1")
    assert h.given["w1"] and h.s.queued() < 2  # free again: the pool tasks run


def test_cancelling_a_waiting_idle_only_task_kills_no_worker() -> None:
    h = Harness()
    h.client("c")
    h.job("c", 1)
    _idle_only(h, "c", 2)
    h.worker("w1")
    h.submit("c", 1, [0])
    h.submit("c", 2, [0])
    h.apply(h.s.cancel_job("c", 2))
    assert h.kills == []
    assert [item[2] for item, _ in h.results_for("c")] == [Status.CANCELLED]
    assert h.s.queued() == 0


def test_nothing_joins_an_idle_only_task_in_the_same_dispatch() -> None:
    """Queued together before any worker joins: the idle worker that takes the
    Process takes nothing else with it, however much credit it has."""
    h = Harness()
    h.client("c")
    _idle_only(h, "c", 1)
    h.job("c", 2)
    h.submit("c", 1, [0])
    h.submit("c", 2, [0, 1, 2])
    h.worker("w1")
    assert [t[1] for t in h.given["w1"]] == [h.s.clients["c"].jobs[1].key]
    h.worker("w2")
    assert h.given["w2"] and all(t[1] == h.s.clients["c"].jobs[2].key for t in h.given["w2"])
