"""Contenders: the libraries a benchmark runs against, each a table column.

A contender offers a pool face (``pool(processes)`` returning something
with ``map``, ``apply``, ``apply_async(...).get()``, ``terminate``,
``join``) and/or a manager face (``manager()`` returning a started
manager with ``dict()``, ``Queue()`` and ``shutdown()``). A face it lacks,
or a library that does not import, raises ``NotAvailable`` and the table
shows "n/a" with the reason.

Adding a contender: subclass ``Contender``, implement ``setup`` and the
faces it has, and add it to ``CONTENDERS``. ``default = False`` keeps it
out of a run unless named with ``--contenders``.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

from tests.bench.framework import Config

REPO_ROOT = Path(__file__).resolve().parents[2]


class NotAvailable(Exception):
    """The contender cannot run this benchmark (not installed, API missing)."""


class Contender:
    #: Column heading; also the name ``--contenders`` takes.
    name = "?"
    #: The column the ratios divide by (exactly one contender).
    baseline = False
    #: Part of a run unless ``--contenders`` says otherwise.
    default = False

    def setup(self, config: Config) -> None:
        """Imports the library and starts anything shared by the benchmark.

        Raises:
            NotAvailable: the library cannot be used here.
        """

    def teardown(self) -> None:
        """Stops what ``setup`` started."""

    def pool(self, processes: int) -> Any:
        raise NotAvailable(f"{self.name} has no pool")

    def manager(self) -> Any:
        raise NotAvailable(f"{self.name} has no manager")


# --- the two default columns -------------------------------------------------


class Multiprocessing(Contender):
    """The standard library with the fork start method: the baseline."""

    name = "multiprocessing"
    baseline = True
    default = True

    def setup(self, config: Config) -> None:
        import multiprocessing

        self._ctx = multiprocessing.get_context("fork")

    def pool(self, processes: int) -> Any:
        return self._ctx.Pool(processes)

    def manager(self) -> Any:
        # ctx.Manager() is a started multiprocessing.managers.SyncManager.
        return self._ctx.Manager()


def import_dmp() -> Any:
    """dmp, or NotAvailable saying why not."""
    try:
        import dmp
    except Exception as exc:
        raise NotAvailable(f"import dmp failed: {type(exc).__name__}: {exc}") from exc
    if getattr(dmp, "__file__", None) is None:
        # Without dmp/__init__.py, ``import dmp`` is an empty namespace package.
        raise NotAvailable("dmp/__init__.py does not exist yet (namespace package)")
    return dmp


def dmp_attr(dmp: Any, name: str) -> Any:
    try:
        return getattr(dmp, name)
    except AttributeError as exc:
        raise NotAvailable(f"dmp.{name} does not exist yet") from exc


class DmpLocal(Contender):
    """dmp in local mode: ``dmp.Pool`` and ``dmp.Manager()`` with no address."""

    name = "dmp"
    default = True

    def setup(self, config: Config) -> None:
        self._dmp = import_dmp()

    def pool(self, processes: int) -> Any:
        return dmp_attr(self._dmp, "Pool")(processes)

    def manager(self) -> Any:
        return dmp_attr(self._dmp, "Manager")()


# --- extension contenders, off by default --------------------------------------




class DmpCluster(Contender):
    """dmp in cluster mode on loopback: a manager daemon and one worker node
    with ``processes`` worker processes, started once per benchmark. Their
    start-up is not timed (pool_startup measures ``Pool(address=...)``
    against daemons already running, as a cluster user sees it)."""

    name = "dmp-cluster"

    def setup(self, config: Config) -> None:
        from tests.daemons import Daemons

        self._dmp = import_dmp()
        dmp_attr(self._dmp, "Pool")
        self._cluster = Daemons()  # port 0, own process groups, logs in a temporary directory
        try:
            self._cluster.start(nodes=1, processes=config.processes)
        except AssertionError as exc:
            raise NotAvailable(f"loopback cluster did not start: {str(exc).splitlines()[0]}") from None
        self._address = self._cluster.address

    def teardown(self) -> None:
        cluster = getattr(self, "_cluster", None)
        if cluster is not None:
            cluster.stop()

    def pool(self, processes: int) -> Any:
        return self._dmp.Pool(processes, address=self._address)

    def manager(self) -> Any:
        return dmp_attr(self._dmp, "Manager")(address=self._address)


def default_chunksize(n: int, processes: int) -> int:
    """The chunksize ``multiprocessing.Pool.map`` picks when given none."""
    chunksize, extra = divmod(n, processes * 4)
    return chunksize + 1 if extra else max(chunksize, 1)


class _FutureResult:
    """The AsyncResult face of a concurrent.futures.Future."""

    def __init__(self, future: Future[Any]) -> None:
        self._future = future

    def get(self, timeout: float | None = None) -> Any:
        return self._future.result(timeout)


class ExecutorPool:
    """A ``multiprocessing.Pool`` face over a concurrent.futures Executor,
    for contenders that only have an executor. ``map`` with no chunksize
    uses the Pool's default chunksize so the rows compare like with like."""

    def __init__(self, executor: Executor, processes: int) -> None:
        self._executor = executor
        self._processes = processes

    def map(self, func: Any, iterable: Any, chunksize: int | None = None) -> list[Any]:
        items = list(iterable)
        if chunksize is None:
            chunksize = default_chunksize(len(items), self._processes)
        return list(self._executor.map(func, items, chunksize=chunksize))

    def apply_async(self, func: Any, args: tuple[Any, ...] = ()) -> _FutureResult:
        return _FutureResult(self._executor.submit(func, *args))

    def apply(self, func: Any, args: tuple[Any, ...] = ()) -> Any:
        return self.apply_async(func, args).get()

    def terminate(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def join(self) -> None:
        pass


class Loky(Contender):
    name = "loky"

    def setup(self, config: Config) -> None:
        try:
            import loky
        except ImportError as exc:
            raise NotAvailable(f"loky is not installed: {exc}") from exc
        self._loky = loky

    def pool(self, processes: int) -> Any:
        # A fresh executor each time, not get_reusable_executor(): the
        # start-up row must pay for the workers it starts.
        return ExecutorPool(self._loky.ProcessPoolExecutor(max_workers=processes), processes)


class _DaskPool(ExecutorPool):
    def __init__(self, client: Any, processes: int) -> None:
        super().__init__(client.get_executor(pure=False), processes)
        self._client = client

    def map(self, func: Any, iterable: Any, chunksize: int | None = None) -> list[Any]:
        # Dask has no chunking: one task per item whatever chunksize says.
        return list(self._client.gather(self._client.map(func, list(iterable), pure=False)))

    def terminate(self) -> None:
        cluster = self._client.cluster
        self._client.close()
        if cluster is not None:
            cluster.close()


class Dask(Contender):
    name = "dask"

    def setup(self, config: Config) -> None:
        try:
            import distributed
        except ImportError as exc:
            raise NotAvailable(f"dask.distributed is not installed: {exc}") from exc
        self._distributed = distributed

    def pool(self, processes: int) -> Any:
        client = self._distributed.Client(
            n_workers=processes, threads_per_worker=1, processes=True, dashboard_address=None
        )
        return _DaskPool(client, processes)


class Ray(Contender):
    name = "ray"

    def setup(self, config: Config) -> None:
        try:
            import ray
            from ray.util.multiprocessing import Pool
        except ImportError as exc:
            raise NotAvailable(f"ray is not installed: {exc}") from exc
        self._ray, self._pool_cls = ray, Pool
        ray.init(num_cpus=config.processes, include_dashboard=False, log_to_driver=False)

    def teardown(self) -> None:
        if hasattr(self, "_ray"):
            self._ray.shutdown()

    def pool(self, processes: int) -> Any:
        return self._pool_cls(processes)


#: Every contender, in column order; the baseline comes first.
CONTENDERS: dict[str, type[Contender]] = {
    cls.name: cls for cls in (Multiprocessing, DmpLocal, DmpCluster, Loky, Dask, Ray)
}
BASELINE = next(name for name, cls in CONTENDERS.items() if cls.baseline)
#: The contender the ratio and target columns are about.
CANDIDATE = DmpLocal.name
