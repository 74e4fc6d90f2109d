"""The ``"dmp"`` joblib parallel backend: ``joblib.Parallel`` (and scikit-learn's ``n_jobs``) on dmp.

    import dmp.joblib                        registers the backend named "dmp"
    with joblib.parallel_config(backend="dmp", address=..., authkey=...):
        Parallel(n_jobs=-1)(...)             -> DmpBackend.configure: one dmp.Pool per Parallel call
            joblib batches tasks (auto batching) -> Pool.apply_async(batch)
            link thread: result or exception  -> joblib's callback -> next batch

Every keyword of ``parallel_config`` other than joblib's own goes to the
``dmp.Pool`` (``address``, ``authkey``, ``max_retries``, ``task_timeout``, ...),
so errors, retries and timeouts behave as for a Pool. Nested ``Parallel``
calls inside a task run on threads (one level down), then sequentially.
"""

from __future__ import annotations

import inspect
from typing import Any

try:
    import joblib
    from joblib._parallel_backends import (  # the extension points joblib's own backends use
        AutoBatchingMixin,
        FallbackToBackend,
        ParallelBackendBase,
        SequentialBackend,
        ThreadingBackend,
    )
except ImportError as exc:  # dmp itself does not depend on joblib
    raise ImportError(f"dmp.joblib needs joblib >= 1.5 (pip install joblib): {exc}") from exc

from dmp import _config

__all__ = ["DmpBackend"]

BACKEND_NAME = "dmp"

# Keywords joblib itself passes to every backend's configure() (Parallel's own
# settings for its memmapping pools); they mean nothing on a cluster.
_JOBLIB_KWARGS = frozenset({"max_nbytes", "temp_folder", "mmap_mode", "verbose", "context", "prefer", "require"})

# Pool keywords the backend sets itself rather than taking from the caller.
_OWN_POOL_KWARGS = frozenset({"processes", "context"})


def _pool_keywords() -> frozenset[str]:
    """The keywords this dmp's Pool accepts (task_timeout arrived after Pool did)."""
    from dmp.client.pool import Pool

    params = inspect.signature(Pool.__init__).parameters
    return frozenset(params) - {"self"} - _OWN_POOL_KWARGS


def _check_pool_kwargs(kwargs: dict[str, Any]) -> None:
    unknown = sorted(set(kwargs) - _pool_keywords())
    if unknown:
        raise TypeError(
            f"the dmp joblib backend got unknown keyword(s) {', '.join(map(repr, unknown))}; "
            f"it takes joblib's own and dmp.Pool's: {', '.join(sorted(_pool_keywords()))}"
        )


# joblib ships no type information, so its classes are Any to mypy.
class DmpBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """Runs joblib batches as tasks of a :class:`dmp.Pool`, local or on a cluster.

    ``address``/``authkey`` pick the cluster as for ``dmp.Pool`` (argument,
    ``dmp.connect()``, ``DMP_ADDRESS``/``DMP_AUTHKEY``); with none of them the
    pool is local (forked worker processes). Any other keyword is a
    ``dmp.Pool`` keyword (``max_retries``, ``task_timeout``, ``modules``, ...).

    Raises:
        ValueError: ``address`` is not a valid dmp address.
        TypeError: a keyword that neither joblib nor ``dmp.Pool`` knows.
    """

    # ``parallel_config(backend="dmp")`` without n_jobs (and so scikit-learn's
    # n_jobs=None) means every slot: the point of choosing this backend.
    default_n_jobs = -1
    supports_retrieve_callback = True  # so return_as="generator" and timeout work
    supports_inner_max_num_threads = False
    supports_sharedmem = False  # require="sharedmem" falls back to threads
    uses_threads = False

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        address: object = None,
        authkey: bytes | str | None = None,
        **pool_kwargs: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        _config.resolve(address, authkey)  # a bad address fails here, where the caller wrote it
        _check_pool_kwargs(pool_kwargs)
        self._address = address
        self._authkey = authkey
        self._pool_kwargs = pool_kwargs
        self._pool: Any = None
        self.parallel: Any = None

    # --- sizing --------------------------------------------------------------------------

    def _cluster_address(self) -> str | None:
        return _config.resolve(self._address, self._authkey).address

    def _slots(self) -> int:
        """Worker slots of the cluster (cluster mode) or CPUs of this host (local mode)."""
        if self._cluster_address() is None:
            return _config.cpu_count()
        from dmp.client.cluster import status

        return max(1, int(status(self._address, self._authkey).get("slots", 0)))

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many batches run at once: ``n_jobs`` itself, or for -1 every slot (-2 all but one, ...).

        Raises:
            ValueError: ``n_jobs`` is 0.
            dmp.ManagerUnavailableError: cluster mode and no manager answered.
            dmp.AuthenticationError: the manager refused the authkey.
        """
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs < 0:
            return max(self._slots() + 1 + n_jobs, 1)
        return n_jobs

    # --- one Parallel call -----------------------------------------------------------------

    def configure(
        self, n_jobs: int | None = 1, parallel: Any = None, prefer: Any = None, require: Any = None,
        **backend_kwargs: Any,
    ) -> int:
        """Start the pool for one ``Parallel`` call; the number of batches it runs at once.

        ``Parallel(..., address=..., task_timeout=...)`` keywords override the
        backend's own. An explicit ``n_jobs=1`` runs sequentially in this
        process, as every joblib backend does; in cluster mode any other
        ``n_jobs`` runs on the cluster, even when it has a single slot.

        Raises:
            TypeError: a keyword that neither joblib nor ``dmp.Pool`` knows.
            dmp.ManagerUnavailableError, dmp.AuthenticationError: as for ``dmp.Pool``.
        """
        extra = {k: v for k, v in backend_kwargs.items() if k not in _JOBLIB_KWARGS}
        _check_pool_kwargs({k: v for k, v in extra.items() if k not in ("address", "authkey")})
        address = extra.pop("address", self._address)
        authkey = extra.pop("authkey", self._authkey)
        if (address, authkey) != (self._address, self._authkey):
            _config.resolve(address, authkey)
            self._address, self._authkey = address, authkey
        n = self.effective_n_jobs(n_jobs)
        local = self._cluster_address() is None
        if n_jobs == 1 or (local and n == 1):
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        from dmp.client.pool import Pool

        # n_jobs=-1 leaves the cluster pool unbounded, so slots that join later are used too.
        processes = None if (n_jobs in (None, -1) and not local) else n
        self._pool = Pool(
            processes, address=self._address, authkey=self._authkey, **{**self._pool_kwargs, **extra}
        )
        self.parallel = parallel
        # joblib runs a call whose configure() says 1 sequentially in this process.
        # A cluster with one slot (or none yet, or a worker being replaced) still
        # gets the work: say 2, the pool's cap above is the real limit.
        return n if local else max(n, 2)

    def submit(self, func: Any, callback: Any = None) -> Any:
        """Run one joblib batch as a pool task; ``callback`` gets ``(ok, value)`` on the result thread.

        Raises:
            RuntimeError: the backend was terminated (no pool).
        """
        pool = self._pool
        if pool is None:
            raise RuntimeError("the dmp joblib backend was terminated: its pool is gone")
        if callback is None:
            return pool.apply_async(func)
        return pool.apply_async(
            func, callback=lambda value: callback((True, value)), error_callback=lambda exc: callback((False, exc))
        )

    def retrieve_result_callback(self, out: tuple[bool, Any]) -> Any:
        """The batch's results, or its exception (its own type, remote traceback as ``__cause__``)."""
        ok, value = out
        if not ok:
            raise value
        return value

    def terminate(self) -> None:
        """End this Parallel call's pool (every result has been taken, or the call was aborted)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Kill the pool's running tasks (another task failed); a fresh pool if more will come."""
        self.terminate()
        if ensure_ready and self.parallel is not None:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel, **self.parallel._backend_kwargs)

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        """A Parallel inside a task: threads in that worker one level down, sequential below (as loky)."""
        level = (self.nesting_level or 0) + 1
        if level > 1:
            return SequentialBackend(nesting_level=level), None
        return ThreadingBackend(nesting_level=level), None


joblib.register_parallel_backend(BACKEND_NAME, DmpBackend)
