"""The client session: jobs out, results back, whichever link carries them.

    user thread --new_job/submit--> link.post(msg, frames)
        local link:  the embedded manager's inbox (same process)
        remote link: the session's I/O thread and a DEALER socket (cluster)
    link thread --on_message(Results)--> sink.on_result(task, status, frames, info)

A sink is the object that turns outcomes into what the user waits on
(AsyncResult, IMapIterator, Future). Sinks run on the link's thread, so
they must be quick and must not block.
"""

from __future__ import annotations

import itertools
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from dmp import _config
from dmp.errors import MessageTooLargeError, ProcessError
from dmp.wire import protocol
from dmp.wire.protocol import Status


class Sink(Protocol):
    def on_result(self, task_id: int, status: Status, frames: list[Any], info: str) -> bool:
        """One task's outcome; return True when the job needs nothing more."""
        ...

    def on_failure(self, exc: BaseException) -> None:
        """The whole job failed (session lost, job refused)."""
        ...


class Link(Protocol):
    def post(self, msg: protocol.Message, frames: list[Any]) -> None: ...

    def wait(self, done: Callable[[], bool], block: Callable[[float | None], Any], timeout: float | None) -> None:
        """Until ``done()`` or ``timeout``: serve the link if this caller can, else ``block(timeout)``."""
        ...

    def close(self) -> None: ...


class Credit:
    """Counts tasks submitted and not yet finished; a feeder waits on it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.outstanding = 0
        self.cond = threading.Condition(threading.Lock())

    def take(self, n: int, alive: Callable[[], bool]) -> bool:
        """Wait until ``n`` more tasks fit; False if ``alive()`` turns false first."""
        with self.cond:
            while self.outstanding > 0 and self.outstanding + n > self.limit:
                if not alive():
                    return False
                self.cond.wait(0.5)
            self.outstanding += n
            return True

    def add(self, n: int) -> None:
        """Count tasks that must not wait (apply_async never blocks)."""
        with self.cond:
            self.outstanding += n

    def give(self, n: int) -> None:
        with self.cond:
            self.outstanding -= n
            self.cond.notify()


class Session:
    """Tracks this client's jobs; thread-safe for callers, sinks run on the link."""

    def __init__(self) -> None:
        self.credit = Credit(_config.MAX_OUTSTANDING_TASKS)
        self.link: Link | None = None
        self.sinks: dict[int, Sink] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.closed: BaseException | None = None

    def new_job(self, sink: Sink, runner: list[Any], max_retries: int) -> int:
        with self._lock:
            if self.closed is not None:
                raise self.closed
            job = next(self._ids)
            self.sinks[job] = sink
        self._post(protocol.DefineJob(job, len(runner), max_retries), runner)
        return job

    def submit(self, job: int, tasks: list[tuple[int, list[Any]]]) -> None:
        items = [[task_id, len(frames)] for task_id, frames in tasks]
        frames = [f for _, fr in tasks for f in fr]
        self._post(protocol.Submit(job, items), frames)

    def end_job(self, job: int) -> None:
        self._post(protocol.EndJob(job), [])

    def cancel_job(self, job: int) -> None:
        self._post(protocol.CancelJob(job), [])

    def signal_job(self, job: int, signum: int) -> None:
        self._post(protocol.SignalJob(job, signum), [])

    def _post(self, msg: protocol.Message, frames: list[Any]) -> None:
        if self.closed is not None:
            raise self.closed
        assert self.link is not None
        self.link.post(msg, frames)

    # --- called on the link's thread -------------------------------------------------

    def on_message(self, msg: protocol.Message, frames: list[Any]) -> None:
        if isinstance(msg, protocol.Results):
            sinks = self.sinks
            pos = 0
            finished = 0
            for job, task_id, status, nframes, _run_s, info in msg.items:
                payload = frames[pos : pos + nframes]
                pos += nframes
                sink = sinks.get(job)
                if status != Status.CANCELLED and not getattr(sink, "holds_credit", False):
                    finished += 1
                if sink is not None and _deliver(sink, task_id, status, payload, info):
                    sinks.pop(job, None)
            if finished:
                self.credit.give(finished)
        elif isinstance(msg, protocol.TaskStarted):
            started = getattr(self.sinks.get(msg.job), "on_started", None)
            if started is not None:
                started(msg.pid, msg.node)
        elif isinstance(msg, protocol.Output):
            stream = sys.stderr if msg.stream == "stderr" else sys.stdout
            if stream is not None:
                prefix = f"({msg.origin}) "
                stream.write("".join(prefix + line + "\n" for line in msg.text.split("\n")))
                stream.flush()
        elif isinstance(msg, protocol.Error):
            sink = self.sinks.pop(msg.ref, None)
            if sink is not None:
                if msg.code == protocol.ErrorCode.TOO_LARGE:
                    sink.on_failure(MessageTooLargeError(f"the manager refused job {msg.ref}: {msg.text}"))
                else:
                    sink.on_failure(ProcessError(f"the manager refused job {msg.ref}: {msg.text}"))

    def fail_all(self, exc: BaseException) -> None:
        """The session is over: every job still waiting fails with ``exc``."""
        with self._lock:
            if self.closed is None:
                self.closed = exc
            sinks, self.sinks = self.sinks, {}
        for sink in sinks.values():
            try:
                sink.on_failure(exc)
            except Exception:  # a user callback failing must not stop the others
                pass


def _deliver(sink: Sink, task_id: int, status: Status, frames: list[Any], info: str) -> bool:
    """One outcome to its sink; a raising user callback is reported, never lost with the rest."""
    try:
        return sink.on_result(task_id, status, frames, info)
    except Exception:
        traceback.print_exc()
        ready = getattr(sink, "ready", None)  # a result whose callback raised is still complete
        return bool(ready()) if ready is not None else False


class LocalLink:
    """Posts into an embedded manager running in this process."""

    __slots__ = ("manager", "peer")

    def __init__(self, manager: Any, session: Session) -> None:
        self.manager = manager
        self.peer = manager.attach_local(session)

    def post(self, msg: protocol.Message, frames: list[Any]) -> None:
        self.manager.post(self.peer, msg, frames)

    def wait(self, done: Callable[[], bool], block: Callable[[float | None], Any], timeout: float | None) -> None:
        self.manager.wait(done, block, timeout)  # the waiting thread runs the embedded reactor

    def close(self) -> None:
        pass
