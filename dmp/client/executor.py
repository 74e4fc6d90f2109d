"""``dmp.Executor``: a concurrent.futures.Executor on the dmp engine.

It shares the Pool's engine: ``submit`` is an apply job whose outcome lands
in a ``concurrent.futures.Future``; ``map`` chunks like ``Pool.imap``.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dmp import _config
from dmp.client.pool import Pool
from dmp.errors import TimeoutError


class Executor(cf.Executor):
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
    ) -> None:
        """``task_timeout`` and ``resources`` are as for ``dmp.Pool``.

        Raises ValueError for a bad argument.
        """
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._max_workers = max_workers or _config.cpu_count()
        self._pool = Pool(
            self._max_workers, initializer, initargs, max_tasks_per_child, address=address, authkey=authkey,
            task_timeout=task_timeout, resources=resources,
        )
        self._shutdown = False
        self._lock = threading.Lock()
        self._futures: set[cf.Future[Any]] = set()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: cf.Future[Any] = _Future(self._pool._link)
            self._futures.add(future)

        def done(value: Any) -> None:
            self._futures.discard(future)
            if future.set_running_or_notify_cancel():
                future.set_result(value)

        def failed(exc: BaseException) -> None:
            self._futures.discard(future)
            if future.set_running_or_notify_cancel():
                future.set_exception(exc)

        self._pool.apply_async(fn, args, kwargs, callback=done, error_callback=failed)
        return future

    def map(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[Any]:
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        it = self._pool.imap(_Star(fn), zip(*iterables), chunksize)
        return _timed(it, timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._shutdown and not wait:
                return
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            for f in pending:
                f.cancel()
        if wait:
            self._pool.close()
            self._pool.join()
        else:
            threading.Thread(target=self._finish, daemon=True).start()

    def _finish(self) -> None:
        self._pool.close()
        self._pool.join()


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
    import time

    end = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = None if end is None else max(0.0, end - time.monotonic())
        try:
            yield it.next(remaining) if hasattr(it, "next") else next(it)
        except StopIteration:
            return
        except TimeoutError:
            raise cf.TimeoutError() from None

