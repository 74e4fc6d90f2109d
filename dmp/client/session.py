"""The client session: one client's jobs with one manager, whichever link carries them.

    user thread --new_job/submit--> credit.charge/take --> link.post(msg, frames)
        local link:  the embedded daemon, on this thread or queued (same process)
        remote link: a DEALER socket to the manager daemon (cluster)
    link thread --on_message(JobResults)--> credit.release, sink.on_result(...)

``Session`` here always means this: the client's job bookkeeping (job ids,
each job's sink, the credit). The signed conversation on the wire is the
transport's signing session (``dmp.wire.transport``), and the proxies'
request/reply channel is a ``Connection`` (``dmp.client.proxylink``).

A sink (``dmp.client.sink``) turns outcomes into what the user waits on.
The session owns the client's :class:`~dmp.client.credit.Credit`: it counts
tasks at submit and releases them when their outcome arrives, except for
sinks that hold credit until the caller consumes a result (imap).
"""

from __future__ import annotations

import itertools
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from dmp import _config
from dmp.client.credit import Credit
from dmp.client.sink import MapSink, Sink
from dmp.errors import MessageTooLargeError, ProcessError
from dmp.wire import protocol
from dmp.wire.protocol import Status


class Link(Protocol):
    def post(self, msg: protocol.Message, frames: list[Any]) -> None: ...

    def wait(self, done: Callable[[], bool], block: Callable[[float | None], Any], timeout: float | None) -> None:
        """Until ``done()`` or ``timeout``: serve the link if this caller can, else ``block(timeout)``."""
        ...

    def close(self) -> None: ...


class Session:
    """Tracks this client's jobs and their credit; thread-safe for callers, sinks run on the link."""

    def __init__(self, limit: int = _config.MAX_OUTSTANDING_TASKS) -> None:
        self.credit = Credit(limit)
        self.link: Link | None = None
        self.sinks: dict[int, Sink] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.closed: BaseException | None = None

    def new_job(
        self,
        sink: Sink,
        runner: list[Any],
        max_retries: int,
        timeout: float = 0.0,
        resources: dict[str, float] | None = None,
        idle_only: bool = False,
    ) -> int:
        """Define a job whose outcomes go to ``sink``; its id. ``timeout``
        (seconds, 0: none), ``resources`` and ``idle_only`` apply to each of its tasks.

        Raises the session's failure if the session is closed.
        """
        with self._lock:
            if self.closed is not None:
                raise self.closed
            job = next(self._ids)
            self.sinks[job] = sink
        self._post(protocol.DefineJob(job, len(runner), max_retries, timeout, resources or {}, idle_only), runner)
        return job

    def submit(self, job: int, tasks: list[tuple[int, list[Any]]], alive: Callable[[], bool] | None = None) -> bool:
        """Send ``(task_id, frames)`` tasks of ``job``, counting them against the credit.

        With ``alive`` (the feeder) wait for credit first, and return False
        without sending if ``alive()`` turns false while waiting; without it
        (apply_async, Process) never wait. Raises what posting raises
        (MessageTooLargeError, the session's failure), the tasks' credit
        released.
        """
        n = len(tasks)
        if alive is None:
            self.credit.charge(n)
        elif not self.credit.take(n, alive):
            return False
        if n == 1:  # apply_async, a chunk of one: no comprehension (a call of its own in 3.11)
            task_id, frames = tasks[0]
            items = [[task_id, len(frames)]]
            frames = list(frames)
        else:
            items = [[task_id, len(frames)] for task_id, frames in tasks]
            frames = [f for _, fr in tasks for f in fr]
        try:
            self._post(protocol.Submit(job, items), frames)
        except BaseException:
            self.credit.release(n)
            raise
        return True

    def fail_unsent(self, sink: MapSink, task_id: int, exc: BaseException) -> None:
        """Task ``task_id`` of ``sink``'s job never left this process: it fails with ``exc``.

        It is counted like a task whose outcome just arrived: nothing to
        release, unless the sink holds credit until the caller consumes it.
        """
        if sink.holds_credit:
            self.credit.charge(1)  # released when the caller consumes the failure
        sink.fail_chunk(task_id, exc)

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
        if isinstance(msg, protocol.JobResults):
            sinks = self.sinks
            pos = 0
            finished = 0
            for job, task_id, status, nframes, info in msg.items:
                payload = frames[pos : pos + nframes]
                pos += nframes
                sink = sinks.get(job)
                if status != Status.CANCELLED and (sink is None or not sink.holds_credit):
                    finished += 1
                if sink is not None and _deliver(sink, task_id, status, payload, info):
                    sinks.pop(job, None)
            if finished:
                self.credit.release(finished)
        elif isinstance(msg, protocol.JobTaskStarted):
            sink = self.sinks.get(msg.job)
            if sink is not None:
                sink.on_started(msg.pid, msg.node)
        elif isinstance(msg, protocol.JobOutput):
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
        return sink.finished()  # a result whose callback raised is still complete


class LocalLink:
    """Posts into the daemon embedded in this process; waiting callers take turns at its steps."""

    __slots__ = ("daemon", "peer", "turns")

    def __init__(self, daemon: Any, turns: Any, session: Session) -> None:
        self.daemon = daemon
        self.turns = turns
        self.peer = daemon.attach_local(session)

    def post(self, msg: protocol.Message, frames: list[Any]) -> None:
        # Handled right here when nobody holds the turn (no thread woken), else queued for who does.
        if not self.turns.run_now(self.daemon.handle_local, self.peer, msg, frames):
            self.daemon.post(self.peer, msg, frames)

    def wait(self, done: Callable[[], bool], block: Callable[[float | None], Any], timeout: float | None) -> None:
        self.turns.wait(done, block, timeout)  # the waiting thread runs the embedded reactor

    def close(self) -> None:
        pass
