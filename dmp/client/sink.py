"""The job contract: what the client session and the pool's feeder call on a job's sink.

A sink turns one job's task outcomes into what the user waits on
(ApplyResult, MapResult, IMapIterator, the cluster Process's Popen). Every
sink subclasses :class:`Sink`; the sinks of map jobs, which the pool's feeder
also drives, subclass :class:`MapSink`. Nobody probes a sink with
``getattr``: what is not overridden here has a default that does nothing.

    Session.on_message (link thread, or a caller leading the link):
        JobResults      -> on_result(task, status, frames, info) per outcome
                           (a raising on_result is reported, then finished() asked)
        JobTaskStarted  -> on_started(pid, node)
        Error(job)      -> on_failure(exc)        the manager refused the job
    Session.fail_all (any thread: link lost, pool closed or terminated)
                        -> on_failure(exc)
    Pool feeder thread (MapSink only):
        abandoned()  before each batch: stop feeding a job nobody reads
        fail_chunk() a chunk that never left (did not pickle, iterable raised)
        set_length() once every task is handed over

Sinks run on the link's thread: they must be quick and must not block.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar

from dmp import serialization
from dmp.node import runners
from dmp.wire.protocol import Status

if TYPE_CHECKING:
    from dmp.client.results import ApplyResult


class Sink(abc.ABC):
    """One job's outcomes, as the session delivers them."""

    # True when this sink's tasks stay counted against the client's credit
    # until the caller consumes their results (imap), so a slow reader slows
    # the feeder. The sink then releases that credit itself (with the
    # ``release`` it was given); the session releases everyone else's on
    # arrival.
    holds_credit: ClassVar[bool] = False

    @abc.abstractmethod
    def on_result(self, task_id: int, status: Status, frames: list[Any], info: Any) -> bool:
        """One task's outcome (``CANCELLED`` included); True when the job needs nothing more.

        ``info`` is the JobResults item's info: for ``LOST`` ``[text, node, pid,
        exitcode, cause]`` (cause: dmp.deaths.WorkerDeath.to_wire), for
        ``CANCELLED`` a text. A user callback raising here
        propagates; the session reports it and asks :meth:`finished`.
        """

    @abc.abstractmethod
    def on_failure(self, exc: BaseException) -> None:
        """The whole job failed (session lost, pool stopped, job refused); may come more than once."""

    def on_started(self, pid: int, node: str) -> None:
        """A worker announced it is running this job's task (``JobTaskStarted``)."""
        return None  # most jobs do not care

    def finished(self) -> bool:
        """After ``on_result`` raised: True if the job is complete all the same."""
        return False


class MapSink(Sink):
    """A map job's sink, which the pool's feeder thread also drives."""

    def abandoned(self) -> bool:
        """True once nobody will read the results: the feeder stops sending tasks."""
        return False

    @abc.abstractmethod
    def fail_chunk(self, task_id: int, exc: BaseException) -> None:
        """Task ``task_id`` never left this process (its items did not pickle,
        the caller's iterable raised, or it was too large to send); it fails with ``exc``."""

    def set_length(self, length: int) -> None:
        """The feeder handed over ``length`` tasks in all (sent or failed); nothing more comes."""
        return None  # a sink that knew its length from the start


class ApplySink(Sink):
    """The pool's one long-lived apply job: task id -> ApplyResult."""

    def __init__(self) -> None:
        self.results: dict[int, ApplyResult] = {}

    def on_result(self, task_id: int, status: Status, frames: list[Any], info: str) -> bool:
        result = self.results.pop(task_id, None)
        if result is not None:
            result.on_result(task_id, status, frames, info)
        return False

    def on_failure(self, exc: BaseException) -> None:
        results, self.results = self.results, {}
        for result in results.values():
            result.on_failure(exc)


class StartupSink(Sink):
    """A cluster pool's start-up tasks (``runners.initialize``): their outcomes go to nobody.

    An initializer that raised there raises again, and fails that task,
    when the worker meets the pool's first task.
    """

    def __init__(self, count: int) -> None:
        self.left = count

    def on_result(self, task_id: int, status: Status, frames: list[Any], info: Any) -> bool:
        self.left -= 1
        return self.left <= 0

    def on_failure(self, exc: BaseException) -> None:
        pass


def start_up(session: Any, runner: list[Any], count: int, resources: dict[str, float] | None) -> None:
    """Send a cluster pool's ``count`` start-up tasks (see ``runners.initialize``), for idle workers only."""
    job = session.new_job(StartupSink(count), runner, 0, 0.0, resources, idle_only=True)
    start = serialization.dumps((runners.initialize, (), {}))
    session.submit(job, [(i, start) for i in range(count)])
    session.end_job(job)
