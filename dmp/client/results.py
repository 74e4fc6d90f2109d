"""What ``Pool`` methods return: ApplyResult, MapResult, the imap iterators
(and IMapResults, the handle imap gives the caller on one).

Each is also a job's sink (``dmp.client.sink``): the link's thread hands it
task outcomes (``on_result``), it decodes them and wakes whoever waits. They
are given what they need explicitly: the link a waiting caller serves, the
pool's ``on_done`` (the job needs nothing more) and, for imap, the credit's
``release``. Semantics follow
``multiprocessing.pool``: a map fails with its first exception once every
chunk is back, callbacks run on the result thread, imap raises an item's
exception at that item's place. A map's ``progress`` bar (dmp.client.progress)
advances as its chunks arrive and closes when the map completes or fails, the
pool stops, or the waiting caller is interrupted.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

from dmp import serialization
from dmp.client.progress import Progress
from dmp.client.sink import MapSink, Sink
from dmp.deaths import WorkerDeath
from dmp.errors import ProcessError, TaskTimeoutError, TimeoutError, WorkerLostError
from dmp.wire.protocol import Status


def decode(status: int, frames: list[Any], info: Any) -> tuple[bool, Any]:
    """(success, value or exception) for one task outcome."""
    try:
        if status == Status.OK:
            return True, serialization.loads(frames)
        if status == Status.RAISED:
            return False, serialization.load_exception(frames)
    except Exception as exc:  # unpickling a result can fail on this side too
        return False, exc
    if status == Status.LOST:
        if isinstance(info, list) and len(info) in (4, 5):
            text, node, pid, exitcode = info[:4]
            cause = WorkerDeath.from_wire(info[4], exitcode) if len(info) == 5 else None
            return False, WorkerLostError(
                str(text), node=str(node), pid=int(pid or 0), exitcode=exitcode, cause=cause
            )
        return False, WorkerLostError(str(info))
    if status == Status.TIMEOUT:
        if isinstance(info, list) and len(info) == 4:
            text, node, pid, timeout = info
            return False, TaskTimeoutError(str(text), node=str(node), pid=int(pid or 0), timeout=float(timeout or 0.0))
        return False, TaskTimeoutError(str(info))
    if status == Status.REFUSED:
        return False, ValueError(str(info))
    return False, ProcessError(info or "task cancelled")


OnDone = Callable[[Any], None]


class _Waitable(Sink):
    def __init__(
        self,
        callback: Callable[[Any], Any] | None,
        error_callback: Callable[[BaseException], Any] | None,
        *,
        link: Any = None,
        on_done: OnDone | None = None,
    ) -> None:
        # The waiting caller serves the link itself when it can (see dmp.client.link).
        self._link = link
        self._on_done = on_done
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._success = True
        self._value: Any = None
        self._progress: Progress | None = None

    def ready(self) -> bool:
        return self._event.is_set()

    def finished(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        if self._event.is_set():
            return
        try:
            if self._link is None:
                self._event.wait(timeout)
            else:
                self._link.wait(self._event.is_set, self._event.wait, timeout)
        except BaseException:  # Ctrl-C in the waiter: the bar goes, the map runs on
            if self._progress is not None:
                self._progress.close()
            raise

    def get(self, timeout: float | None = None) -> Any:
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    def _complete(self) -> None:
        if self._progress is not None:
            self._progress.close()
        try:
            if self._success:
                if self._callback is not None:
                    self._callback(self._value)
            elif self._error_callback is not None:
                self._error_callback(self._value)
        finally:  # a raising callback is reported by the link; the result is still ready
            self._event.set()
            on_done, self._on_done = self._on_done, None
            if on_done is not None:
                on_done(self)

    def on_failure(self, exc: BaseException) -> None:
        if not self._event.is_set():
            self._success, self._value = False, exc
            self._complete()

    __class_getitem__ = classmethod(lambda cls, item: cls)


class ApplyResult(_Waitable):
    """One ``apply_async`` call; ``task_id`` identifies it in the pool's apply job."""

    def on_result(self, task_id: int, status: Status, frames: list[Any], info: str) -> bool:
        self._success, self._value = decode(status, frames, info)
        self._complete()
        return True


AsyncResult = ApplyResult


class MapResult(_Waitable, MapSink):
    """A whole ``map_async``: chunks land in their slice of the result list."""

    def __init__(
        self,
        chunksize: int,
        length: int,
        callback: Any,
        error_callback: Any,
        *,
        link: Any = None,
        on_done: OnDone | None = None,
        progress: Progress | None = None,
    ) -> None:
        super().__init__(callback, error_callback, link=link, on_done=on_done)
        self._progress = progress
        self._chunksize = chunksize
        self._value = [None] * length
        self._left = -(-length // chunksize) if length else 0
        if self._left == 0:
            self._complete()

    def on_result(self, task_id: int, status: Status, frames: list[Any], info: str) -> bool:
        if status == Status.CANCELLED:
            return False
        return self._set_chunk(task_id, *decode(status, frames, info))

    def fail_chunk(self, task_id: int, exc: BaseException) -> None:
        """A chunk that never left this process (its arguments did not pickle)."""
        self._set_chunk(task_id, False, exc)

    def _set_chunk(self, task_id: int, ok: bool, value: Any) -> bool:
        self._left -= 1
        progress = self._progress
        if progress is not None:
            progress.advance(1 if self._chunksize == 1 else progress.chunk_items(task_id))
        if ok and self._success:
            c = self._chunksize
            self._value[task_id * c : (task_id + 1) * c] = value
        elif not ok and self._success:
            self._success, self._value = False, value
        if self._left == 0:
            self._complete()
            return True
        return False


class IMapIterator(MapSink):
    """Ordered results of ``imap``; ``next(timeout)`` as in multiprocessing.

    Backpressure: a task's credit is released (``release``, the session
    credit's) when the caller *consumes* its result, not when it arrives, so
    a slow consumer slows the feeder instead of piling results up. An
    iterator the caller drops is :meth:`abandon`-ed: its buffered and future
    results release their credit at once and its feeding stops.
    """

    holds_credit = True

    def __init__(
        self, release: Callable[[int], None], on_done: OnDone | None = None, progress: Progress | None = None
    ) -> None:
        self._release = release
        self._on_done = on_done
        self._progress = progress
        self._abandoned = False
        self._cond = threading.Condition(threading.Lock())
        self._items: collections.deque[tuple[bool, Any]] = collections.deque()
        self._unsorted: dict[int, tuple[bool, Any]] = {}
        self._index = 0
        self._length: int | None = None
        self._received = 0
        self._failure: BaseException | None = None

    def __iter__(self) -> IMapIterator:
        return self

    def next(self, timeout: float | None = None) -> Any:
        try:
            ok, value = self._take(timeout)
        except BaseException as exc:  # the end, a failed job, or Ctrl-C in the reader
            if not isinstance(exc, TimeoutError):
                self.stop_progress()
            raise
        self._release(1)
        if ok:
            return value
        raise value

    __next__ = next

    def _take(self, timeout: float | None) -> tuple[bool, Any]:
        with self._cond:
            while not self._items:
                if self._length is not None and self._index == self._length:
                    self._on_done = None
                    raise StopIteration from None
                if self._failure is not None:
                    raise self._failure
                if not self._cond.wait(timeout) and not self._items:
                    if self._length is not None and self._index == self._length:
                        raise StopIteration from None
                    raise TimeoutError from None
            return self._items.popleft()

    def stop_progress(self) -> None:
        """Close the bar, if any (the reader is gone or interrupted)."""
        if self._progress is not None:
            self._progress.close()

    def abandon(self) -> None:
        """The caller dropped us: give back what we hold and stop asking for more."""
        self.stop_progress()
        with self._cond:
            if self._abandoned:
                return
            self._abandoned = True
            held = len(self._items) + len(self._unsorted)
            self._items.clear()
            self._unsorted.clear()
        if held:
            self._release(held)

    def abandoned(self) -> bool:
        return self._abandoned

    # --- producer side --------------------------------------------------------------

    def _put(self, task_id: int, ok: bool, value: Any, items: int) -> None:
        with self._cond:
            self._received += 1
            if self._progress is not None:  # before the item shows: a reader at the end sees the full count
                self._progress.advance(items)
                if self._received == self._length:
                    self._progress.close()
            if self._abandoned:
                self._release(1)
                return
            self._place(task_id, ok, value)
            self._cond.notify()

    def _place(self, task_id: int, ok: bool, value: Any) -> None:
        if task_id == self._index:
            self._items.append((ok, value))
            self._index += 1
            while self._index in self._unsorted:
                self._items.append(self._unsorted.pop(self._index))
                self._index += 1
        else:
            self._unsorted[task_id] = (ok, value)

    def set_length(self, length: int) -> None:
        """The feeder knows how many tasks there are; wake a reader waiting past the end."""
        with self._cond:
            self._length = length
            self._cond.notify_all()
            if self._progress is not None and self._received >= length:
                self._progress.close()
        self._check_done()

    def _check_done(self) -> bool:
        done = self._length is not None and self._received >= self._length
        if done and self._on_done is not None:
            self._on_done(self)
        return done

    def on_result(self, task_id: int, status: Status, frames: list[Any], info: str) -> bool:
        if status == Status.CANCELLED:
            return False
        ok, value = decode(status, frames, info)
        self._put(task_id, ok, value, self._items_in(task_id, ok, value))
        return self._check_done()

    def fail_chunk(self, task_id: int, exc: BaseException) -> None:
        self._put(task_id, False, exc, self._items_in(task_id, False, exc))
        self._check_done()

    def _items_in(self, task_id: int, ok: bool, value: Any) -> int:
        """A chunk's item count for the bar: its results' when it succeeded."""
        if self._progress is None:
            return 0
        return len(value) if ok and isinstance(value, list) else self._progress.chunk_items(task_id)

    def on_failure(self, exc: BaseException) -> None:
        if self._progress is not None:
            self._progress.close()
        with self._cond:
            self._failure = exc
            self._cond.notify_all()


class IMapUnorderedIterator(IMapIterator):
    """Results of ``imap_unordered`` in the order they arrive."""

    def _place(self, task_id: int, ok: bool, value: Any) -> None:
        self._items.append((ok, value))
        self._index += 1


class IMapResults:
    """What imap returns: the caller's handle on an IMapIterator.

    Each task's result is a chunk (a list); with chunksize 1 it is unwrapped.
    When the caller drops this handle before the end, the iterator is
    abandoned so that the pool's feeder neither waits for nor feeds it.
    """

    __slots__ = ("done", "it", "unwrap")

    def __init__(self, it: IMapIterator, *, unwrap: bool) -> None:
        self.it = it
        self.unwrap = unwrap
        self.done = False

    def __iter__(self) -> IMapResults:
        return self

    def next(self, timeout: float | None = None) -> Any:
        try:
            chunk = self.it.next(timeout)
        except StopIteration:
            self.done = True
            raise
        except KeyboardInterrupt:  # Ctrl-C in the reader: its bar goes (the job runs on)
            self.it.stop_progress()
            raise
        return chunk[0] if self.unwrap else chunk

    __next__ = next

    def __del__(self) -> None:
        if not self.done:
            self.it.abandon()
