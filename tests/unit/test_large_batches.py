"""Large payloads are not batched into one huge message: the manager's Dispatch,
the feeder's Submit and a worker's TaskDone each close once their frames hold
about a MiB, so a large task is forwarded while the next is still on its way
(correctness of the split; its speed is the numpy_payload benchmark's)."""

from __future__ import annotations

import pytest
from dmp_server import placement
from dmp_server.scheduler import Command
from test_scheduler import Harness, sends_of

from dmp.client import feeder
from dmp.client.feeder import RUN
from dmp.wire import protocol

pytestmark = pytest.mark.timeout(30)

BIG = placement.DISPATCH_BYTES  # one task this large fills a Dispatch


def _submit_big(h: Harness, ids: list[int], small: frozenset[int] = frozenset()) -> list[Command]:
    tasks = [(i, [b"A:1:%d" % i] + ([] if i in small else [bytes(BIG)])) for i in ids]
    return h.apply(h.s.submit("A", 1, tasks))


def test_a_workers_share_of_large_tasks_goes_as_one_dispatch_each() -> None:
    h = Harness()
    h.client("A")
    h.worker("w1")
    h.job("A", 1, runner=[b"r1"])
    sends = sends_of(_submit_big(h, [1, 2]), protocol.Dispatch)
    assert [len(s.msg.tasks) for s in sends] == [1, 1]
    # The runner rides in the first only; the tasks keep their order and frames.
    assert [s.msg.jobs != [] for s in sends] == [True, False]
    assert sends[0].frames[0] == b"r1"
    assert [bytes(s.frames[-2]) for s in sends] == [b"A:1:1", b"A:1:2"]
    assert all(len(s.frames[-1]) == BIG for s in sends)
    h.complete("w1", run_s=1e-5)  # short tasks: now the worker takes many at once
    sends = sends_of(_submit_big(h, list(range(3, 11))), protocol.Dispatch)
    assert len(sends) > 2 and all(len(s.msg.tasks) == 1 for s in sends)
    assert [bytes(s.frames[0]) for s in sends] == [b"A:1:%d" % i for i in range(3, 3 + len(sends))]
    h.complete("w1", run_s=1e-5)
    assert len(h.results_for("A")) >= 2


def test_small_tasks_still_share_a_dispatch() -> None:
    h = Harness()
    h.client("A")
    h.worker("w1")
    h.job("A", 1)
    sends = sends_of(_submit_big(h, [1, 2, 3], small=frozenset({1, 2})), protocol.Dispatch)
    assert [len(s.msg.tasks) for s in sends] == [2]  # two small ones together, as before
    h.complete("w1", run_s=1e-5)
    # A large one closes the Dispatch it joins: the small ones before it ride along.
    sends = sends_of(_submit_big(h, [4, 5, 6, 7], small=frozenset({4, 6, 7})), protocol.Dispatch)
    assert [[bytes(f) for f in s.frames if len(f) < BIG] for s in sends] == [[b"A:1:4", b"A:1:5"], [b"A:1:6", b"A:1:7"]]


class _Recorder:
    """Stands in for the Session the feeder hands its batches to: records them."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.ended: list[int] = []

    def submit(self, job: int, batch: list[tuple[int, list[bytes]]], alive: object = None) -> bool:
        self.batches.append([task_id for task_id, _ in batch])
        return True

    def end_job(self, job: int) -> None:
        self.ended.append(job)


class _Sink:
    n = -1

    def abandoned(self) -> bool:
        return False

    def set_length(self, n: int) -> None:
        self.n = n


def test_the_feeder_closes_a_batch_at_a_mib_of_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feeder, "FEED_FLUSH_S", 3600.0)  # only the bytes (or the end) close a batch
    rec, sink = _Recorder(), _Sink()
    fd = feeder.Feeder(rec, False, lambda: RUN)
    big = bytes(feeder.FEED_BATCH_BYTES)
    fd._feed_one(7, sink, feeder.chunks([b"x", big, b"y", big, b"z"], 1))  # a list: batched
    # Every task once, in order; a batch closes right after each large one
    # (without the byte bound all five would go together).
    assert rec.batches == [[0, 1], [2, 3], [4]]
    assert sink.n == 5 and rec.ended == [7]


def test_a_source_that_may_wait_is_never_held_in_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A generator's next item may wait on the results of those it gave: each goes at once."""
    monkeypatch.setattr(feeder, "FEED_FLUSH_S", 3600.0)
    rec, sink = _Recorder(), _Sink()
    fd = feeder.Feeder(rec, False, lambda: RUN)
    fd._feed_one(7, sink, feeder.chunks((b for b in [b"x", b"y", b"z"]), 1))
    assert rec.batches == [[0], [1], [2]]
    fd._feed_one(8, sink, feeder.chunks(range(3), 1))  # a range: batched
    assert rec.batches[3:] == [[0, 1, 2]]
