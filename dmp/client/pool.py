"""``dmp.Pool``: multiprocessing's Pool API on the dmp engine.

    caller --apply_async--> pickle --> session.submit (the pool's apply job)
    caller --map/imap--> Feeder thread: chunk, pickle, session.submit (waits for credit)
    link thread --results--> ApplyResult / MapResult / IMapIterator (sinks)

``progress=`` hangs a tqdm bar (dmp.client.progress) on the map's sink.
The feeder (dmp.client.feeder) pulls from the caller's iterable only as fast
as the session's credit allows (``MAX_OUTSTANDING_TASKS``), so a huge
generator is never held in memory. The pool counts no credit itself: the
session does. Which engine a pool runs on is ``dmp.client.engine.for_pool``.
"""

from __future__ import annotations

import itertools
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dmp import _config, serialization
from dmp.client import progress as bars
from dmp.client.feeder import CLOSE, RUN, TERMINATE, Feeder, chunks, state_of
from dmp.client.results import (
    ApplyResult,
    IMapIterator,
    IMapResults,
    IMapUnorderedIterator,
    MapResult,
)
from dmp.client.session import Session
from dmp.client.sink import ApplySink, MapSink, start_up
from dmp.errors import MessageTooLargeError, ProcessError
from dmp.node import runners

ProgressArg = bool | dict[str, Any]  # the map family's progress= (see dmp.client.progress)

class Pool:
    """A pool of worker processes, local (forked) or on a dmp cluster.

    ``multiprocessing.Pool``'s arguments, plus ``address``/``authkey`` (a
    cluster; else ``dmp.connect()``'s or ``DMP_ADDRESS``, else local),
    ``max_retries`` (reruns of a task whose worker died), ``modules``
    (modules whose code travels by value to nodes that lack them) and
    ``worker_memory_limit`` (local pools: see dmp.client.engine.for_pool).

    Raises:
        ValueError: ``processes`` below 1, a bad ``maxtasksperchild`` or
            ``max_retries``, or a malformed address.
        TypeError: ``initializer`` is not callable, or ``modules`` holds
            something that is not a module or module name.
        ManagerUnavailableError: (cluster mode) no manager answered in time.
        AuthenticationError: (cluster mode) the manager refused the authkey.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        address: object = None,
        authkey: bytes | str | None = None,
        max_retries: int = _config.MAX_RETRIES,
        modules: Iterable[Any] = (),
        task_timeout: float | None = None,
        resources: dict[str, float] | None = None,
        worker_memory_limit: int | str | None = None,
    ) -> None:
        """Raises ValueError (a bad argument; ``resources`` in local mode,
        ``worker_memory_limit`` in cluster mode) or TypeError (``initializer``
        not callable)."""
        self._state = RUN
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError("max_retries must be a non-negative int")
        self._timeout = _config.check_timeout(task_timeout)
        self._resources = _config.check_resources(resources)
        target = _config.resolve(address, authkey)
        if self._resources and target.address is None:
            raise ValueError("resources= needs a cluster whose nodes declare them (dmp worker --resources); "
                             "a local pool has none")
        serialization.send_by_value(modules)
        self._max_retries = max_retries
        self._by_value = target.address is not None
        from dmp.client.engine import for_pool
        self._engine: Any
        self._init: runners.PoolInit | None
        self._engine, self._init, self._processes = for_pool(
            target, processes, initializer, tuple(initargs), maxtasksperchild, context, worker_memory_limit
        )
        self._session: Session = self._engine.session
        self._link = self._session.link  # what a caller waiting on a result serves
        self._pending: set[Any] = set()
        self._pending_cond = threading.Condition(threading.Lock())
        self._ids = itertools.count()
        self._apply = ApplySink()
        apply_runner = serialization.dumps(runners.Apply(self._init), by_value=True) if self._init else []
        self._apply_job = self._session.new_job(self._apply, apply_runner, max_retries, self._timeout, self._resources)
        if self._init is not None and initializer is not None:  # no node worker starts for this pool
            start_up(self._session, apply_runner, min(self._processes, self._engine.slots or 1), self._resources)
        self._feeder = Feeder(self._session, self._by_value, state_of(self))  # (no reference cycle)
        self._engine.start()  # a local pool forks its workers only now (dmp.client.engine.LocalEngine.start)

    # --- bookkeeping -------------------------------------------------------------------

    @property
    def _pool(self) -> list[Any]:
        """The worker process objects (multiprocessing exposes this too)."""
        return list(self._engine.processes)

    @property
    def _cache(self) -> dict[int, Any]:
        """The results not yet complete, as multiprocessing's ``pool._cache``
        (its documentation's examples read it); a snapshot."""
        with self._pending_cond:
            return {id(r): r for r in self._pending}

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    def _track(self, result: Any) -> None:
        with self._pending_cond:
            self._pending.add(result)

    def _job_done(self, result: Any) -> None:
        with self._pending_cond:
            self._pending.discard(result)
            # Only join() waits here (after close/terminate): notify_all costs microseconds per apply_async.
            if not self._pending and self._state != RUN:
                self._pending_cond.notify_all()

    # --- apply ---------------------------------------------------------------------------

    def apply(self, func: Callable[..., Any], args: tuple[Any, ...] = (), kwds: dict[str, Any] = {}) -> Any:  # noqa: B006 (multiprocessing's signature)
        """Run ``func(*args, **kwds)`` in a worker and return its result (blocks).

        Raises:
            ValueError: the pool is closed or terminated.
            WorkerLostError: a task's worker process died more than ``max_retries`` times.
            ManagerUnavailableError: (cluster mode) the manager went away with the task in flight.
            Exception: a task's own exception, with its type, message and remote traceback as ``__cause__``.
        """
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwds: dict[str, Any] = {},  # noqa: B006 (multiprocessing's signature)
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> ApplyResult:
        """Run ``func(*args, **kwds)`` in a worker; return an ``AsyncResult`` at once.

        ``callback`` gets the result, ``error_callback`` the exception, on a dmp
        thread (keep them short, as with multiprocessing). An argument that does not
        pickle fails the result, not the call.

        Raises:
            ValueError: the pool is closed or terminated.
        """
        self._check_running()
        result = ApplyResult(callback, error_callback, link=self._link, on_done=self._job_done)
        try:
            frames = serialization.dumps_call(func, tuple(args), dict(kwds), by_value=self._by_value)
        except Exception as exc:
            result.on_failure(exc)
            return result
        task_id = next(self._ids)
        self._track(result)
        self._apply.results[task_id] = result
        try:
            self._session.submit(self._apply_job, [(task_id, frames)])
        except MessageTooLargeError as exc:
            self._apply.results.pop(task_id, None)
            result.on_failure(exc)
        return result

    # --- map family ------------------------------------------------------------------------

    def map(
        self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int | None = None, *, progress: ProgressArg = False
    ) -> list[Any]:
        """``list(map(func, iterable))`` with the calls spread over the workers (blocks).

        The iterable is consumed at once (``len()`` picks the chunk size when
        ``chunksize`` is None); chunks run on workers and results come back in order.
        ``progress=True`` draws a tqdm bar on stderr as results arrive; a dict is
        passed to tqdm as keyword arguments (the same on every map method).

        Raises:
            ValueError: the pool is not running, or ``chunksize`` is below 1.
            TypeError: ``progress`` is not a bool or a dict.
            ImportError: ``progress`` asks for a bar and tqdm is not installed.
            WorkerLostError: a task's worker process died more than ``max_retries`` times.
            ManagerUnavailableError: (cluster mode) the manager went away with the task in flight.
            Exception: a task's own exception, with its type, message and remote traceback as ``__cause__``.
        """
        return self._map_async(func, iterable, chunksize, None, None, star=False, progress=progress).get()  # type: ignore[no-any-return]

    def starmap(
        self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]], chunksize: int | None = None, *, progress: ProgressArg = False
    ) -> list[Any]:
        """Like :meth:`map`, calling ``func(*args)`` for each ``args`` in ``iterable``.

        Raises:
            ValueError: the pool is not running, or ``chunksize`` is below 1.
            TypeError: ``progress`` is not a bool or a dict.
            ImportError: ``progress`` asks for a bar and tqdm is not installed.
            WorkerLostError: a task's worker process died more than ``max_retries`` times.
            ManagerUnavailableError: (cluster mode) the manager went away with the task in flight.
            Exception: a task's own exception, with its type, message and remote traceback as ``__cause__``.
        """
        return self._map_async(func, iterable, chunksize, None, None, star=True, progress=progress).get()  # type: ignore[no-any-return]

    def map_async(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
        *,
        progress: ProgressArg = False,
    ) -> MapResult:
        """Like :meth:`map`, returning a ``MapResult`` whose ``get()`` gives the list.

        Raises:
            ValueError: the pool is not running, or ``chunksize`` is below 1.
            TypeError: ``progress`` is not a bool or a dict.
            ImportError: ``progress`` asks for a bar and tqdm is not installed.
        """
        return self._map_async(func, iterable, chunksize, callback, error_callback, star=False, progress=progress)

    def starmap_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
        *,
        progress: ProgressArg = False,
    ) -> MapResult:
        """Like :meth:`starmap`, returning a ``MapResult`` whose ``get()`` gives the list.

        Raises:
            ValueError: the pool is not running, or ``chunksize`` is below 1.
            TypeError: ``progress`` is not a bool or a dict.
            ImportError: ``progress`` asks for a bar and tqdm is not installed.
        """
        return self._map_async(func, iterable, chunksize, callback, error_callback, star=True, progress=progress)

    def _map_async(
        self, func: Any, iterable: Iterable[Any], chunksize: int | None, callback: Any, error_callback: Any, *, star: bool, progress: ProgressArg
    ) -> MapResult:
        self._check_running()
        items = iterable if hasattr(iterable, "__len__") else list(iterable)
        length = len(items)  # type: ignore[arg-type]
        if chunksize is None:
            chunksize = self._default_chunksize(length)
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        bar = bars.start(progress, length, chunksize)
        result = MapResult(chunksize, length, callback, error_callback, link=self._link, on_done=self._job_done, progress=bar)
        if length:
            self._start_job(func, star, result, chunks(items, chunksize), -(-length // chunksize))
        return result

    def _default_chunksize(self, length: int) -> int:
        # Local: multiprocessing's heuristic, about four chunks per worker.
        # Cluster: eight per slot. Nodes differ in speed and a straggling
        # chunk holds up the whole map, so smaller chunks balance better; the
        # scheduler's prefetch credit already hides the network round trip
        # that makes multiprocessing favour big chunks.
        per_slot = 8 if self._by_value else 4
        chunksize, extra = divmod(length, self._processes * per_slot)
        return chunksize + 1 if extra else max(chunksize, 1)

    def imap(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1, *, progress: ProgressArg = False) -> Iterator[Any]:
        """A lazy :meth:`map`: an iterator of results in order, as they arrive.

        The iterable is pulled only a bounded window ahead of what you consume, so
        an endless generator works; ``next(timeout)`` is available on the iterator.
        A ``progress`` bar's total is ``len(iterable)``, or None without one.

        Raises:
            ValueError: the pool is not running, or ``chunksize`` is below 1.
            TypeError: ``progress`` is not a bool or a dict.
            ImportError: ``progress`` asks for a bar and tqdm is not installed.
            Exception: when iterated, as :meth:`map` (and ``dmp.TimeoutError`` from ``next(timeout)``).
        """
        return self._imap(IMapIterator, func, iterable, chunksize, progress)

    def imap_unordered(
        self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1, *, progress: ProgressArg = False
    ) -> Iterator[Any]:
        """Like :meth:`imap`, yielding results in the order they finish.

        Raises:
            ValueError: the pool is not running, or ``chunksize`` is below 1.
            TypeError: ``progress`` is not a bool or a dict.
            ImportError: ``progress`` asks for a bar and tqdm is not installed.
            Exception: when iterated, as :meth:`map` (and ``dmp.TimeoutError`` from ``next(timeout)``).
        """
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize, progress)

    def _imap(self, cls: type[IMapIterator], func: Any, iterable: Iterable[Any], chunksize: int, progress: ProgressArg) -> Iterator[Any]:
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
        it = cls(self._session.credit.release, self._job_done, bars.start(progress, total, chunksize))
        self._start_job(func, False, it, chunks(iterable, chunksize))
        if chunksize == 1:
            return IMapResults(it, unwrap=True)
        return (item for chunk in IMapResults(it, unwrap=False) for item in chunk)

    def _start_job(self, func: Any, star: bool, sink: MapSink, tasks: Iterable[tuple[int, list[Any]]], count: int = 0) -> None:
        self._track(sink)
        try:
            runner = serialization.dumps(runners.MapChunk(func, star, self._init), by_value=self._by_value)
        except Exception as exc:
            sink.on_failure(exc)
            self._job_done(sink)
            return
        job = self._session.new_job(sink, runner, self._max_retries, self._timeout, self._resources)
        if not self._feeder.feed_here(job, sink, tasks, count):  # ``count`` tasks (0: unknown); a few are fed here
            self._feeder.add(job, sink, tasks)

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Accept no more work; the workers exit once the queued tasks are done. Never raises."""
        if self._state == RUN:
            self._state = CLOSE
            self._feeder.wake()

    def terminate(self) -> None:
        """Stop the workers now; unfinished results fail with ``ProcessError``. Never raises."""
        if self._state == TERMINATE:
            return
        self._state = TERMINATE
        self._feeder.wake()
        self._engine.stop(kill=True)
        self._session.fail_all(ProcessError("the pool was terminated before the task finished"))
        with self._pending_cond:
            self._pending.clear()
            self._pending_cond.notify_all()

    def join(self) -> None:
        """Wait until the workers have exited (after :meth:`close` or :meth:`terminate`).

        Raises:
            ValueError: the pool is still running (neither closed nor terminated).
        """
        if self._state == RUN:
            raise ValueError("Pool is still running")
        if self._state == CLOSE:
            self._feeder.join()
            with self._pending_cond:
                while self._pending:
                    self._pending_cond.wait(0.5)
            self._engine.stop(kill=False)
            self._session.fail_all(ProcessError("the pool was closed"))

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__} state={self._state} pool_size={self._processes}>"

    def __del__(self, _warn: Any = warnings.warn) -> None:
        # (_warn bound early, as multiprocessing's Pool does: at interpreter
        # shutdown nothing can be imported any more.)
        if getattr(self, "_state", TERMINATE) == RUN and getattr(self, "_engine", None) is not None:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, stacklevel=2, source=self)
        if getattr(self, "_state", TERMINATE) != TERMINATE and getattr(self, "_engine", None) is not None:
            try:
                self.terminate()
            except Exception:
                pass
