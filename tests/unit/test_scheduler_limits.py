"""The Scheduler's per-job limits as a pure state machine: task timeouts
(a timed-out task fails alone, uncharged) and node resources (never
over-subscribed, shared by a node's worker slots, fair between clients).

Uses test_scheduler's harness, which checks the counters after every call
and on top of it here: no node ever has less than nothing free.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_scheduler import Harness, dispatched

from dmp.wire.protocol import Status

pytestmark = pytest.mark.timeout(30)


class LimitHarness(Harness):
    def check(self) -> None:
        super().check()
        s = self.s
        for node in s.nodes.values():
            for res, amount in node.free.items():
                assert amount >= 0, f"node {node.name} over-subscribed: {res} free {amount}"
                assert amount <= node.total.get(res, 0.0), f"node {node.name} got {res} back twice"
            held: dict[str, float] = {}
            for w in s.workers.values():
                for t in w.assigned.values():
                    if t.held is node:
                        for res, amount in t.job.resources.items():
                            held[res] = held.get(res, 0.0) + amount
            for res, total in node.total.items():
                assert node.free.get(res, 0.0) + held.get(res, 0.0) == pytest.approx(total), (node.name, res)

    def node(self, name: str, **resources: float) -> None:
        self.apply(self.s.add_node(name, dict(resources)))

    def rjob(self, client: str, job: int, *, timeout: float = 0.0, **resources: float) -> list[Any]:
        return self.apply(self.s.define_job(client, job, [b"runner-%d" % job], 3, timeout, dict(resources)))


# --- timeouts ---------------------------------------------------------------------------


def test_the_timeout_travels_with_the_runner() -> None:
    h = LimitHarness()
    h.client("c")
    h.rjob("c", 1, timeout=2.5)
    h.worker("w1")
    h.submit("c", 1, [0])
    (_worker, msg), = h.dispatches
    assert msg.jobs[0][2] == 2.5


def test_a_timed_out_task_fails_alone_uncharged_and_the_rest_requeue() -> None:
    h = LimitHarness()
    h.client("c")
    h.rjob("c", 1, timeout=1.0)
    h.worker("w1", pid=77, node="n1")
    h.submit("c", 1, [0, 1])
    key = h.given["w1"][0][0]
    h.given.pop("w1")
    h.apply(h.s.remove_worker("w1", -9, key, timed_out=True))
    results = h.results_for("c")
    assert [(item[1], item[2]) for item, _ in results] == [(0, Status.TIMEOUT)]
    text, node, pid, timeout = results[0][0][4]
    assert "task 0" in text and "task_timeout of 1 s" in text and "77" in text and "'n1'" in text
    assert (node, pid, timeout) == ("n1", 77, 1.0)
    assert h.s.totals.retried == 0 and h.s.totals.workers_lost == 0
    assert h.s.queued() == 1  # task 1 waits for a worker, uncharged
    h.worker("w2")
    assert [t[2] for t in h.given["w2"]] == [0]  # attempt 0: never charged
    h.complete("w2")
    assert [item[1] for item, _ in h.results_for("c")] == [1]


def test_a_timeout_report_for_a_finished_task_charges_nothing() -> None:
    h = LimitHarness()
    h.client("c")
    h.rjob("c", 1, timeout=1.0)
    h.worker("w1")
    h.submit("c", 1, [0])
    key = h.given["w1"][0][0]
    h.complete("w1")  # its result won the race against the kill
    assert [item[2] for item, _ in h.results_for("c")] == [Status.OK]
    h.apply(h.s.remove_worker("w1", -9, key, timed_out=True))
    assert h.results_for("c") == []


# --- resources --------------------------------------------------------------------------


def test_a_request_no_joined_node_has_is_refused_at_once() -> None:
    h = LimitHarness()
    h.client("c")
    h.node("cpu-only", MEM=8e9)
    h.worker("w1", node="cpu-only")
    h.rjob("c", 1, GPU=1)
    cmds = h.submit("c", 1, [0, 1])
    assert not dispatched(cmds)
    results = h.results_for("c")
    assert [(item[1], item[2]) for item, _ in results] == [(0, Status.REFUSED), (1, Status.REFUSED)]
    assert "GPU=1" in results[0][0][4] and "cpu-only: MEM=8e+09" in results[0][0][4]
    h.apply(h.s.end_job("c", 1))
    assert 1 not in h.s.clients["c"].jobs
    # More than any one node has is refused too, even if two nodes together would do.
    h.node("g1", GPU=1)
    h.node("g2", GPU=1)
    h.rjob("c", 2, GPU=2)
    h.submit("c", 2, [0])
    assert [item[2] for item, _ in h.results_for("c")] == [Status.REFUSED]


def test_tasks_run_only_where_the_resources_are_and_never_over_subscribe() -> None:
    h = LimitHarness()
    h.client("c")
    h.node("gpu", GPU=1)
    h.node("plain")
    for i in range(3):
        h.worker(f"g{i}", node="gpu")
        h.worker(f"p{i}", node="plain")
    h.rjob("c", 1, GPU=1)
    h.submit("c", 1, range(5))
    done = 0
    while done < 5:
        busy = [w for w, q in h.given.items() if q]
        assert len(busy) == 1 and h.s.workers[busy[0]].node == "gpu"
        assert len(h.given[busy[0]]) == 1
        h.complete(busy[0])
        done += 1
    assert len(h.results_for("c")) == 5
    assert h.s.nodes["gpu"].free == {"GPU": 1.0}


def test_worker_slots_of_a_node_share_its_resources() -> None:
    h = LimitHarness()
    h.client("c")
    h.node("n", GPU=2, MEM=10)
    for i in range(4):
        h.worker(f"w{i}", node="n")
    h.rjob("c", 1, GPU=1, MEM=4)
    h.submit("c", 1, range(6))
    assert sum(len(q) for q in h.given.values()) == 2  # GPU would allow 2, MEM 2 as well
    h.rjob("c", 2, MEM=3)
    h.submit("c", 2, range(3))
    assert sum(len(q) for q in h.given.values()) == 2  # MEM: 10 - 8 leaves 2 < 3
    first = next(w for w, q in h.given.items() if q)
    h.complete(first)
    assert h.s.nodes["n"].free["MEM"] >= 0


def test_plain_tasks_flow_past_tasks_waiting_for_resources() -> None:
    h = LimitHarness()
    h.client("c")
    h.node("n", GPU=1)
    h.worker("w1", node="n")
    h.worker("w2", node="n")
    h.rjob("c", 1, GPU=1)
    h.submit("c", 1, range(3))
    h.job("c", 2)
    h.submit("c", 2, range(4))
    # One GPU task runs; the other worker takes plain tasks instead of idling.
    assert sorted(len(q) for q in h.given.values())[0] >= 1


def test_fairness_between_clients_waiting_for_the_same_resource() -> None:
    h = LimitHarness()
    h.node("n", GPU=1)
    h.worker("w1", node="n")
    h.worker("w2", node="n")
    for c in ("a", "b"):
        h.client(c)
        h.rjob(c, 1, GPU=1)
    h.submit("a", 1, range(6))
    h.submit("b", 1, range(6))
    for _ in range(8):
        busy = next(w for w, q in h.given.items() if q)
        h.complete(busy)
    order = [client for _w, client in h.log]
    # a's first task left before b submitted; from then on they take turns.
    assert order[1:9] == ["a", "b"] * 4


def test_a_node_leaving_returns_nothing_twice() -> None:
    h = LimitHarness()
    h.client("c")
    h.node("n", GPU=1)
    h.worker("w1", node="n")
    h.worker("w2", node="n")
    h.rjob("c", 1, GPU=1)
    h.submit("c", 1, range(3))
    old = h.s.nodes["n"]
    # The node leaves: the manager forgets it, then its workers one by one.
    h.s.remove_node("n")
    h.die("w1", None, None)
    h.die("w2", None, None)
    assert old.free == {"GPU": 1.0}
    assert h.s.queued() == 3  # defined while a node fit: the tasks wait for one
    # It comes back (a fresh record): still one GPU task at a time.
    h.node("n", GPU=1)
    h.worker("w3", node="n")
    h.worker("w4", node="n")
    assert sum(len(q) for q in h.given.values()) == 1
    assert h.s.nodes["n"].free == {"GPU": 0.0}


def test_a_node_joining_again_keeps_what_its_tasks_hold() -> None:
    h = LimitHarness()
    h.client("c")
    h.node("n", GPU=2)
    h.worker("w1", node="n")
    h.worker("w2", node="n")
    h.rjob("c", 1, GPU=1)
    h.submit("c", 1, range(4))
    assert sum(len(q) for q in h.given.values()) == 2
    h.node("n", GPU=3)  # says Hello again with more
    h.worker("w3", node="n")
    assert sum(len(q) for q in h.given.values()) == 3
    assert h.s.nodes["n"].free == {"GPU": 0.0}


def test_cancel_and_client_loss_give_resources_back() -> None:
    h = LimitHarness()
    h.node("n", GPU=1)
    h.worker("w1", node="n")
    h.client("a")
    h.rjob("a", 1, GPU=1)
    h.submit("a", 1, range(2))
    h.apply(h.s.cancel_job("a", 1))
    assert h.s.nodes["n"].free == {"GPU": 1.0}
    h.client("b")
    h.rjob("b", 1, GPU=1)
    h.submit("b", 1, range(2))
    h.apply(h.s.remove_client("b"))
    assert h.s.nodes["n"].free == {"GPU": 1.0}
