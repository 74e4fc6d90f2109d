"""``dmp.Executor``: a concurrent.futures.Executor on the dmp engine.

It shares the Pool's engine: ``submit`` is an apply job whose outcome lands
in a ``concurrent.futures.Future``; ``map`` chunks like ``Pool.imap`` (and
takes its ``progress=``, the bar's total the shortest input's length).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dmp.client.pool import Pool
from dmp.errors import TimeoutError


class Executor(cf.Executor):
    """A ``concurrent.futures.Executor`` on the dmp engine, local or on a cluster.

    ``max_workers`` as for ``ProcessPoolExecutor`` (in a cluster, None means
    every worker slot); ``address``/``authkey`` as for :class:`dmp.Pool`. A
    worker that dies does not break the executor: its call is retried, then
    fails alone with ``WorkerLostError``.

    Raises:
        ValueError: ``max_workers`` is not positive, or the address is malformed.
        ManagerUnavailableError: (cluster mode) no manager answered in time.
        AuthenticationError: (cluster mode) the manager refused the authkey.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        address: object = None,
        authkey: bytes | str | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        task_timeout: float | None = None,
        resources: dict[str, float] | None = None,
        worker_memory_limit: int | str | None = None,
    ) -> None:
        """``task_timeout``, ``resources`` and ``worker_memory_limit`` are as for ``dmp.Pool``.

        Raises ValueError for a bad argument.
        """
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        # None: the CPU count locally, every worker slot of a cluster (as Pool does).
        self._pool = Pool(
            max_workers, initializer, initargs, max_tasks_per_child, address=address, authkey=authkey,
            task_timeout=task_timeout, resources=resources, worker_memory_limit=worker_memory_limit,
        )
        self._max_workers = self._pool._processes
        # Like concurrent.futures' call queue: at most this many submitted
        # calls are handed to the engine (where they run or wait in a worker);
        # the rest wait here, where shutdown(cancel_futures=True) can cancel them.
        self._window = self._max_workers + max(1, self._max_workers)
        self._in_flight = 0
        self._waiting: collections.deque[tuple[cf.Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]]
        self._waiting = collections.deque()
        self._shutdown = False
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; return a ``concurrent.futures.Future``.

        The future's ``result()`` raises the call's own exception, ``WorkerLostError``
        past the retries, or ``ManagerUnavailableError`` (cluster mode) when the
        manager went away.

        Raises:
            RuntimeError: the executor was shut down.
        """
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: cf.Future[Any] = _Future(self._pool._link)
            self._waiting.append((future, fn, args, kwargs))
        self._hand_over()
        return future

    def _hand_over(self) -> None:
        """Move waiting calls to the engine while the window has room."""
        while True:
            with self._lock:
                if self._in_flight >= self._window or not self._waiting:
                    return
                future, fn, args, kwargs = self._waiting.popleft()
                if not future.set_running_or_notify_cancel():
                    continue  # cancelled while it waited: it never runs
                self._in_flight += 1
            self._pool.apply_async(fn, args, kwargs, callback=self._ended(future, True),
                                   error_callback=self._ended(future, False))

    def _ended(self, future: cf.Future[Any], ok: bool) -> Callable[[Any], None]:
        def ended(value: Any) -> None:
            with self._lock:
                self._in_flight -= 1
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
            if self._pool._state == "RUN" or self._waiting:
                self._hand_over()

        return ended

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        progress: bool | dict[str, Any] = False,
    ) -> Iterator[Any]:
        """``map(fn, *iterables)`` over the workers, results in order (``chunksize`` batches calls).

        ``progress`` as for ``Pool.map``: a tqdm bar whose total is the shortest
        input's ``len()`` (None if an input has none).

        Raises:
            ValueError: ``chunksize`` is below 1.
            TypeError: ``progress`` is not a bool or a dict.
            ImportError: ``progress`` asks for a bar and tqdm is not installed.
            RuntimeError: the executor was shut down.
            TimeoutError: (``concurrent.futures.TimeoutError``, while iterating) a result
                was not ready ``timeout`` seconds after the call.
            Exception: while iterating, a call's own exception or ``WorkerLostError``.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        if progress is True or isinstance(progress, dict):  # zip() has no len(): the inputs may
            sized = all(hasattr(i, "__len__") for i in iterables)
            total = min((len(i) for i in iterables), default=0) if sized else None  # type: ignore[arg-type]
            progress = {"total": total, **(progress if isinstance(progress, dict) else {})}
        it = self._pool.imap(_Star(fn), zip(*iterables), chunksize, progress=progress)
        return _timed(it, timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more work; with ``wait``, return once the pending work is done.

        ``cancel_futures`` cancels the futures that have not started. Never raises.
        """
        with self._lock:
            if self._shutdown and not wait:
                return
            self._shutdown = True
            if cancel_futures:
                # Calls not yet handed to a worker never run (as with
                # concurrent.futures); those already running finish.
                waiting, self._waiting = self._waiting, collections.deque()
            else:
                waiting = collections.deque()
        for future, *_ in waiting:
            future.cancel()
        if wait:
            self._finish()
        else:
            threading.Thread(target=self._finish, daemon=True).start()

    def _finish(self) -> None:
        # Every waiting call is handed over (as running ones end) before the
        # pool closes; the waiting thread serves the engine meanwhile.
        while self._waiting:
            self._pool._link.wait(lambda: not self._waiting, _nap, 0.5)
        self._pool.close()
        self._pool.join()


def _nap(timeout: float | None) -> None:
    time.sleep(min(timeout if timeout is not None else 0.01, 0.01))


class _Future(cf.Future):  # type: ignore[type-arg]
    """A Future whose waiting caller serves dmp's I/O itself, as ``AsyncResult.get`` does."""

    def __init__(self, link: Any) -> None:
        super().__init__()
        self._link = link

    def _block(self, timeout: float | None) -> None:
        with self._condition:
            if not self.done():
                self._condition.wait(timeout)

    def _serve(self, timeout: float | None) -> float | None:
        """Wait (serving the link) up to ``timeout``; what is left for the base class."""
        if self.done():
            return timeout
        self._link.wait(self.done, self._block, timeout)
        return None if timeout is None else 0

    def result(self, timeout: float | None = None) -> Any:
        return super().result(self._serve(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._serve(timeout))


class _Star:
    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, args: tuple[Any, ...]) -> Any:
        return self.fn(*args)


def _timed(it: Iterator[Any], timeout: float | None) -> Iterator[Any]:
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = None if end is None else max(0.0, end - time.monotonic())
        try:
            yield it.next(remaining) if hasattr(it, "next") else next(it)
        except StopIteration:
            return
        except TimeoutError:
            raise cf.TimeoutError() from None

