"""The client's job contract alone: Credit, the Session's credit rules, the Sink classes, runner retirement.

No processes, no sockets: the session is driven with hand-made JobResults and
posts into a recording list (the link interface, not the transport).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from dmp import serialization
from dmp.client.credit import Credit
from dmp.client.process import _ClusterPopen
from dmp.client.results import ApplyResult, IMapIterator, IMapUnorderedIterator, MapResult
from dmp.client.session import Session
from dmp.client.sink import ApplySink, MapSink, Sink
from dmp.errors import MessageTooLargeError, ProcessError
from dmp.node import runners
from dmp.wire import protocol
from dmp.wire.protocol import Status

pytestmark = pytest.mark.timeout(30)


# --- Credit ------------------------------------------------------------------------------------


def test_credit_counts_charges_and_releases() -> None:
    c = Credit(10)
    assert c.take(4, lambda: True)
    c.charge(3)
    assert c.outstanding == 7
    c.release(5)
    assert c.outstanding == 2


def test_credit_lets_an_oversized_batch_through_when_nothing_is_outstanding() -> None:
    c = Credit(2)
    assert c.take(5, lambda: False)  # would otherwise wait forever
    assert c.outstanding == 5


def test_credit_take_gives_up_when_the_job_is_no_longer_wanted() -> None:
    c = Credit(2)
    c.charge(2)
    assert not c.take(1, lambda: False)
    assert c.outstanding == 2


def test_credit_take_waits_for_a_release() -> None:
    c = Credit(2)
    c.charge(2)
    taken = threading.Event()
    waiting = threading.Event()

    def alive() -> bool:
        waiting.set()
        return True

    t = threading.Thread(target=lambda: c.take(1, alive) and taken.set())
    t.start()
    assert waiting.wait(10)
    assert not taken.is_set()
    c.release(1)
    assert taken.wait(10)
    t.join(10)
    assert c.outstanding == 2


@pytest.mark.parametrize("limit", [0, -1, 1.5, None])
def test_credit_refuses_a_bad_limit(limit: Any) -> None:
    with pytest.raises(ValueError, match="credit limit"):
        Credit(limit)


# --- the Session's credit rules ---------------------------------------------------------------


class _Recorder:
    """The link interface, recording what the session posts."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.posted: list[protocol.Message] = []
        self.fail = fail

    def post(self, msg: protocol.Message, frames: list[Any]) -> None:
        if self.fail is not None and isinstance(msg, protocol.Submit):
            raise self.fail
        self.posted.append(msg)

    def wait(self, done: Any, block: Any, timeout: float | None) -> None:
        block(timeout)

    def close(self) -> None:
        pass


def _session(fail: BaseException | None = None) -> Session:
    s = Session(limit=8)
    s.link = _Recorder(fail)
    return s


def _ok(job: int, task_id: int, value: Any) -> tuple[list[Any], list[Any]]:
    frames = serialization.dumps(value)
    return [job, task_id, int(Status.OK), len(frames), ""], frames


def _results(*outcomes: tuple[list[Any], list[Any]]) -> tuple[protocol.JobResults, list[Any]]:
    return protocol.JobResults([o[0] for o in outcomes]), [f for o in outcomes for f in o[1]]


def test_session_releases_credit_when_a_result_arrives() -> None:
    s = _session()
    result = ApplyResult(None, None)
    job = s.new_job(result, [], 0)
    assert s.submit(job, [(0, serialization.dumps(1))])
    assert s.credit.outstanding == 1
    s.on_message(*_results(_ok(job, 0, 42)))
    assert s.credit.outstanding == 0
    assert result.get(0) == 42
    assert job not in s.sinks  # the job needs nothing more


def test_imap_holds_credit_until_the_caller_consumes() -> None:
    s = _session()
    it = IMapIterator(s.credit.release)
    job = s.new_job(it, [], 0)
    assert s.submit(job, [(0, serialization.dumps([1])), (1, serialization.dumps([2]))], alive=lambda: True)
    s.on_message(*_results(_ok(job, 1, ["b"]), _ok(job, 0, ["a"])))
    assert s.credit.outstanding == 2  # arrived, not yet consumed
    assert it.next(0) == ["a"]
    assert s.credit.outstanding == 1
    it.abandon()  # the buffered one is released at once
    assert s.credit.outstanding == 0


def test_a_failed_submit_releases_its_credit() -> None:
    s = _session(fail=MessageTooLargeError("too big"))
    job = s.new_job(ApplyResult(None, None), [], 0)
    with pytest.raises(MessageTooLargeError):
        s.submit(job, [(0, serialization.dumps(1))])
    assert s.credit.outstanding == 0


def test_an_unsent_task_of_an_imap_is_counted_until_consumed() -> None:
    s = _session()
    it = IMapUnorderedIterator(s.credit.release)
    s.new_job(it, [], 0)
    s.fail_unsent(it, 0, ValueError("did not pickle"))
    assert s.credit.outstanding == 1
    with pytest.raises(ValueError, match="did not pickle"):
        it.next(0)
    assert s.credit.outstanding == 0


def test_an_unsent_task_of_a_map_costs_no_credit() -> None:
    s = _session()
    result = MapResult(1, 1, None, None)
    s.new_job(result, [], 0)
    s.fail_unsent(result, 0, ValueError("did not pickle"))
    assert s.credit.outstanding == 0
    with pytest.raises(ValueError):
        result.get(0)


def test_a_raising_callback_leaves_the_result_complete_and_the_job_forgotten(capsys: Any) -> None:
    s = _session()
    done: list[Any] = []

    def boom(value: Any) -> None:
        raise RuntimeError("callback failed")

    result = ApplyResult(boom, None, on_done=done.append)
    job = s.new_job(result, [], 0)
    s.submit(job, [(0, serialization.dumps(1))])
    s.on_message(*_results(_ok(job, 0, 7)))
    assert result.get(0) == 7 and done == [result]
    assert job not in s.sinks
    assert "callback failed" in capsys.readouterr().err


def test_fail_all_fails_every_sink_and_closes_the_session() -> None:
    s = _session()
    results = [ApplyResult(None, None) for _ in range(3)]
    for r in results:
        s.new_job(r, [], 0)
    s.fail_all(ProcessError("gone"))
    for r in results:
        with pytest.raises(ProcessError, match="gone"):
            r.get(0)
    with pytest.raises(ProcessError):
        s.new_job(ApplyResult(None, None), [], 0)


# --- every sink keeps the contract ---------------------------------------------------------------


@pytest.mark.parametrize("cls", [ApplyResult, MapResult, IMapIterator, IMapUnorderedIterator, ApplySink, _ClusterPopen])
def test_every_sink_is_a_sink(cls: type) -> None:
    assert issubclass(cls, Sink)


@pytest.mark.parametrize("cls", [MapResult, IMapIterator, IMapUnorderedIterator])
def test_map_sinks_are_map_sinks(cls: type) -> None:
    assert issubclass(cls, MapSink)


def test_a_sink_must_say_what_it_does_with_outcomes() -> None:
    class Half(Sink):
        def on_failure(self, exc: BaseException) -> None:
            pass

    with pytest.raises(TypeError):
        Half()  # type: ignore[abstract]


# --- runners ask for retirement through the task context ----------------------------------------


def test_a_pool_runner_retires_its_worker_after_maxtasksperchild() -> None:
    init = runners.PoolInit("contract-test", None, (), 2)
    runner = runners.MapChunk(lambda x: x * 2, False, init)
    ctx = runners.TaskContext()
    assert runner([1, 2], ctx) == [2, 4] and not ctx.retire
    assert runner([3], ctx) == [6] and ctx.retire


def test_a_process_runner_always_retires_its_worker() -> None:
    class P:
        def run(self) -> None:
            pass

    runner = runners.RunProcess(P, {})
    ctx = runners.TaskContext()
    assert runner(None, ctx) == 0 and ctx.retire and runner.announce
    assert not runners.Apply().announce and not runners.MapChunk(abs, False).announce
