"""The pool's feeder thread: map jobs fed from the caller's iterables.

    Pool.map/imap --add(job, sink, chunks)--> Feeder (one thread, "dmp-feeder",
        started by the first map) --pickle each chunk, batch--> session.submit
        (waits there for credit) ... set_length + end_job once the iterable ends

The feeder pulls from an iterable only as fast as the session's credit
allows, so a huge generator is never held in memory, and it stops feeding a
job whose sink is abandoned or whose pool is terminated. Jobs are fed one
after another, in the order the maps were called.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dmp import serialization
from dmp.client.session import Session
from dmp.client.sigint import critical
from dmp.client.sink import MapSink
from dmp.errors import MessageTooLargeError

# The pool's states, as its lifecycle sets them and the feeder reads them.
RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"


def state_of(pool: Any) -> Callable[[], str]:
    """What reads ``pool._state`` for its feeder, without keeping ``pool`` alive
    (TERMINATE once it is gone): the pool holds its feeder, so a closure on the
    pool was a reference cycle, and a dropped pool (its daemon, sockets and
    fds) waited for the collector (docs/performance.md)."""
    ref = weakref.ref(pool)
    return lambda: getattr(ref(), "_state", TERMINATE)

# Tasks pickled before they are handed to the engine in one message; a batch
# also goes out once its first task has waited FEED_FLUSH_S, or once it holds
# FEED_BATCH_BYTES (a big chunk goes at once: pickling it cost far more than
# a message, and a worker may be idle meanwhile).
FEED_BATCH = 64
FEED_FLUSH_S = 0.0005
# A batch also goes out once its payload frames hold this many bytes: large
# arguments travel one task a message, so the manager forwards the first to a
# worker while the next is still on its way (never store-and-forward 128 MiB).
FEED_BATCH_BYTES = 16 * 1024
# A local map of at most this many chunks is fed by its caller (Feeder.feed_here).
FEED_HERE_MAX = 64


class Feeder:
    """Feeds the map jobs of one pool, in turn, on its own thread."""

    def __init__(self, session: Session, by_value: bool, state: Callable[[], str]) -> None:
        self._session = session
        self._by_value = by_value
        self._state = state  # the pool's RUN / CLOSE / TERMINATE
        self._feed: collections.deque[tuple[int, MapSink, Iterable[Any]]] = collections.deque()
        self._feed_cond = threading.Condition(threading.Lock())
        # Made and started by the first map: a pool used only for apply never pays
        # for it (nor does every later fork in this process: each forked child
        # resets every Thread object still alive, threading._after_fork).
        self._thread: threading.Thread | None = None

    def add(self, job: int, sink: MapSink, chunks: Iterable[tuple[int, list[Any]]]) -> None:
        """Feed ``chunks`` to ``job`` once the jobs added before it are fed."""
        with self._feed_cond:
            self._feed.append((job, sink, chunks))
            self._feed_cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._feed_loop, name="dmp-feeder", daemon=True)
                self._thread.start()

    def feed_here(self, job: int, sink: MapSink, chunks: Iterable[tuple[int, list[Any]]], count: int) -> bool:
        """Feed ``job``'s ``count`` chunks on the calling thread, now, if it may;
        False (nothing done) if not: ``count`` unknown (0) or above
        FEED_HERE_MAX, a cluster pool, the caller on the reactor's turn (a
        callback), too little credit to send them all without waiting, or
        jobs queued for the feeder thread (they go first).

        For a local map of a few chunks, whose caller would only wait for the
        feeder thread: the first chunk reaches a worker as soon as it is
        pickled, with no thread woken and no lock of the interpreter fought
        over while the feeder thread pickles the next.
        """
        turns = getattr(self._session.link, "turns", None)  # the LocalLink's
        credit = self._session.credit
        if not 0 < count <= FEED_HERE_MAX or turns is None or turns.runs_here():
            return False
        if credit.outstanding + count > credit.limit:
            return False
        with self._feed_cond:
            if self._feed:
                return False
        # A Ctrl-C waits for the job to be fed whole (and ended), then is raised:
        # half fed, its result would never complete and join() would wait for it.
        with critical:
            try:
                self._feed_one(job, sink, chunks)
            except Exception as exc:  # as the feeder thread: the job fails, the pool goes on
                if self._state() == RUN:
                    sink.on_failure(exc)
        return True

    def wake(self) -> None:
        """The pool's state changed: an idle feeder rechecks it (and exits if not RUN)."""
        with self._feed_cond:
            self._feed_cond.notify_all()

    def join(self) -> None:
        """Wait for the thread to exit (it does once the pool is not RUN and all is fed)."""
        if self._thread is not None:
            self._thread.join()

    def _feed_loop(self) -> None:
        while True:
            with self._feed_cond:
                while not self._feed:
                    if self._state() != RUN:  # closed or terminated, and nothing left to feed
                        return
                    self._feed_cond.wait(0.5)
                job, sink, chunks = self._feed[0]
            try:
                self._feed_one(job, sink, chunks)
            except Exception as exc:  # the feeder must outlive any one job
                if self._state() == RUN:
                    sink.on_failure(exc)
            finally:
                with self._feed_cond:
                    self._feed.popleft()
                # Hold nothing of a finished job while waiting for the next one:
                # its arguments and results belong to the caller alone.
                del job, sink, chunks

    def _feed_one(self, job: int, sink: MapSink, chunks: Iterable[tuple[int, list[Any]]]) -> None:
        alive = lambda: self._state() != TERMINATE and not sink.abandoned()  # noqa: E731
        batch: list[tuple[int, list[Any]]] = []
        started = 0.0
        nbytes = 0  # of the batch's payload frames
        handed = 0  # tasks sent or failed here: what the sink will hear about
        next_id = 0
        by_value = self._by_value
        # A source that may wait for its next item gets no batch held across that wait.
        eager = not getattr(chunks, "sized", False)
        try:
            for task_id, chunk in chunks:
                next_id = task_id + 1
                try:
                    frames = serialization.dumps(chunk, by_value=by_value)
                except Exception as exc:
                    self._session.fail_unsent(sink, task_id, exc)
                    handed += 1
                    continue
                if not batch:
                    started = time.monotonic()
                    nbytes = 0
                batch.append((task_id, frames))
                # Frames are bytes or byte-format memoryviews (pickle buffers): len is their size.
                nbytes += len(frames[0]) if len(frames) == 1 else sum(map(len, frames))
                if (
                    eager
                    or len(batch) >= FEED_BATCH
                    or nbytes >= FEED_BATCH_BYTES
                    or time.monotonic() - started >= FEED_FLUSH_S
                ):
                    if not self._send(job, batch, alive, sink):
                        break
                    handed += len(batch)
                    batch = []
            else:
                if batch and self._send(job, batch, alive, sink):
                    handed += len(batch)
        except Exception as exc:  # the caller's iterable raised: that item fails
            if batch and self._send(job, batch, alive, sink):
                handed += len(batch)
            self._session.fail_unsent(sink, next_id, exc)
            handed += 1
        if self._state() == TERMINATE:
            return
        sink.set_length(handed)
        self._session.end_job(job)

    def _send(self, job: int, batch: list[tuple[int, list[Any]]], alive: Callable[[], bool], sink: MapSink) -> bool:
        """Submit ``batch`` once credit allows; False if the job stopped being wanted first."""
        try:
            return self._session.submit(job, batch, alive)
        except MessageTooLargeError as exc:  # the session released the batch's credit
            if len(batch) == 1:  # this task alone is too big: it fails, the rest go on
                self._session.fail_unsent(sink, batch[0][0], exc)
                return True
            half = len(batch) // 2
            return self._send(job, batch[:half], alive, sink) and self._send(job, batch[half:], alive, sink)


class Chunks:
    """(chunk index, up to ``size`` items) pairs, pulled from ``iterable`` as they are asked for.

    ``sized``: the iterable has a length (a list, a range, an array), so taking
    its next item does not wait on anything. A generator's next item may wait
    on anything, even on a result of the items it already gave (a feedback
    loop): those are sent before it is asked for another, as multiprocessing
    does, never held in a batch.
    """

    __slots__ = ("_it", "sized")

    def __init__(self, iterable: Iterable[Any], size: int) -> None:
        self.sized = hasattr(iterable, "__len__")
        self._it = _chunked(iter(iterable), size)

    def __iter__(self) -> Iterator[tuple[int, list[Any]]]:
        return self._it


def _chunked(it: Iterator[Any], size: int) -> Iterator[tuple[int, list[Any]]]:
    if size == 1:
        for i, x in enumerate(it):
            yield i, [x]
        return
    for i in itertools.count():
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        yield i, chunk


chunks = Chunks
