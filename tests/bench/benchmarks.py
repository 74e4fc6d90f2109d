"""The benchmarks and the rows they fill, in table order.

Each ``measure_*`` gets a loaded contender and the run's Config and
returns one dict of row values per repetition. Pools and managers are
created outside the timed region (except in pool_startup, which times
exactly that), warmed up first, and always terminated. Results are
checked after the timed region: a wrong answer is an error, not a number.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tests.bench import tasks
from tests.bench.contenders import Contender, NotAvailable
from tests.bench.framework import (
    Benchmark,
    Config,
    Direction,
    Kind,
    RepValues,
    Row,
    Stopwatch,
    percentile,
    repeat,
)

MiB = 1 << 20


class WrongResult(RuntimeError):
    """A contender returned something other than the right answer."""


@contextmanager
def open_pool(contender: Contender, config: Config) -> Iterator[Any]:
    pool = contender.pool(config.processes)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


@contextmanager
def open_manager(contender: Contender) -> Iterator[Any]:
    manager = contender.manager()
    try:
        yield manager
    finally:
        manager.shutdown()


# --- (1), (2) tiny-task throughput ------------------------------------------------


def map_tiny(
    row: str, chunksize: int | None, quick_n: int
) -> Callable[[Contender, Config], list[RepValues]]:
    def measure(contender: Contender, config: Config) -> list[RepValues]:
        n = config.size(100_000, quick_n)
        items = list(range(n))
        expected = [x * x for x in items]
        with open_pool(contender, config) as pool:
            # Warm-up: every worker started and has run the function once.
            pool.map(tasks.square, range(100), chunksize=chunksize)

            def once() -> RepValues:
                with Stopwatch() as sw:
                    out = pool.map(tasks.square, items, chunksize=chunksize)
                if out != expected:
                    raise WrongResult(
                        f"map returned {len(out)} results, not the {n} squares in order"
                    )
                return {row: n / sw.seconds}

            return repeat(config, MAP_TINY_MIN_REPS if chunksize is None else 1, once)

    return measure


#: The default-chunksize map of 100k takes ~20 ms: more repetitions steady it.
MAP_TINY_MIN_REPS = 7


# --- (2b) the cost of a progress bar -----------------------------------------------


def measure_map_progress(contender: Contender, config: Config) -> list[RepValues]:
    """A chunksize=1 map of 100k tiny tasks without and with a progress bar.

    dmp draws its bar with ``map(..., progress={"file": devnull})``; the other
    libraries with the usual idiom, ``tqdm(pool.imap(..., chunksize=1))``.
    Both maps run in every repetition, in turn (which goes first alternates),
    on one pool, so the pair sees the same machine load: compare dmp's two
    rows with each other. The CPU rows (``time.process_time()`` of the
    calling process, all its threads, per task) show the bar's cost even
    when a loaded machine makes the wall-clock rows noisy.
    """
    import os

    try:
        from tqdm import tqdm
    except ImportError as exc:
        raise NotAvailable("tqdm is not installed") from exc
    n = config.size(100_000, 5_000)
    items = list(range(n))
    expected = [x * x for x in items]
    native = contender.name.startswith("dmp")
    with open(os.devnull, "w") as devnull, open_pool(contender, config) as pool:
        if not native and not hasattr(pool, "imap"):
            raise NotAvailable(f"{contender.name}'s pool has no imap to wrap in a bar")

        def with_bar() -> list[int]:
            if native:
                return pool.map(tasks.square, items, chunksize=1, progress={"file": devnull})  # type: ignore[no-any-return]
            return list(tqdm(pool.imap(tasks.square, items, chunksize=1), total=n, file=devnull))

        pool.map(tasks.square, range(100), chunksize=1)

        def timed(fn: Callable[[], list[int]]) -> tuple[float, float, list[int]]:
            cpu = time.process_time()
            with Stopwatch() as sw:
                out = fn()
            return sw.seconds, time.process_time() - cpu, out

        turn = [0]

        def once() -> RepValues:
            turn[0] += 1
            runs = [("nobar", lambda: pool.map(tasks.square, items, chunksize=1)), ("bar", with_bar)]
            if turn[0] % 2:  # which goes first alternates: neither is always the warmer one
                runs.reverse()
            got = {name: timed(fn) for name, fn in runs}
            if any(out != expected for _, _, out in got.values()):
                raise WrongResult(f"a map returned other than the {n} squares in order")
            values: RepValues = {}
            for name, (wall, cpu, _) in got.items():
                values[f"map_chunk1_{name}"] = n / wall
                values[f"map_chunk1_cpu_{name}"] = cpu / n * 1e6
            return values

        return repeat(config, 1, once)


# --- (3) apply_async round trip ------------------------------------------------------


def measure_apply_rtt(contender: Contender, config: Config) -> list[RepValues]:
    n = config.size(2000, 200)
    with open_pool(contender, config) as pool:
        for i in range(config.size(200, 20)):
            pool.apply_async(tasks.square, (i,)).get()

        def once() -> RepValues:
            samples = []
            results = []
            clock = time.perf_counter
            for i in range(n):
                t0 = clock()
                results.append(pool.apply_async(tasks.square, (i,)).get())
                samples.append(clock() - t0)
            if results != [i * i for i in range(n)]:
                raise WrongResult("apply_async(square, (i,)).get() did not return i*i")
            samples.sort()
            return {
                "apply_rtt_p50": percentile(samples, 50) * 1e6,
                "apply_rtt_p99": percentile(samples, 99) * 1e6,
            }

        return repeat(config, 1, once)


# --- (4) numpy payloads both ways -------------------------------------------------------


def measure_numpy_payload(contender: Contender, config: Config) -> list[RepValues]:
    try:
        import numpy as np
    except ImportError as exc:
        raise NotAvailable(f"numpy is not installed: {exc}") from exc
    count, nbytes = 8, config.size(16 * MiB, 1 * MiB)
    rng = np.random.default_rng(12345)
    # Random bytes, so that no compression anywhere can shrink the payload.
    arrays = [rng.integers(0, 256, nbytes, dtype=np.uint8) for _ in range(count)]
    with open_pool(contender, config) as pool:
        pool.map(tasks.identity, [a[:4096] for a in arrays[:2]], chunksize=1)

        def once() -> RepValues:
            with Stopwatch() as sw:
                out = pool.map(tasks.identity, arrays, chunksize=1)
            if len(out) != count or not all(np.array_equal(a, b) for a, b in zip(arrays, out)):
                raise WrongResult("the arrays did not come back unchanged")
            del out
            # Bytes counted: every array's data once to a worker and once back.
            return {"numpy_payload": 2 * count * nbytes / 1e6 / sw.seconds}

        return repeat(config, 1, once)


# --- (5) Pool(2) creation to first result -----------------------------------------------


def measure_pool_startup(contender: Contender, config: Config) -> list[RepValues]:
    starts = config.size(10, 3)

    def one_start() -> float:
        t0 = time.perf_counter()
        pool = contender.pool(config.processes)
        try:
            if pool.apply(tasks.square, (7,)) != 49:
                raise WrongResult("apply(square, (7,)) did not return 49")
            return time.perf_counter() - t0
        finally:
            # Teardown is not timed: terminate() cost is not start-up cost.
            pool.terminate()
            pool.join()

    one_start()  # warm-up: first-time imports and caches

    def once() -> RepValues:
        return {"pool_startup": statistics.median(one_start() for _ in range(starts)) * 1e3}

    return repeat(config, 1, once)


# --- (6) manager round trips --------------------------------------------------------------


def measure_manager_dict(contender: Contender, config: Config) -> list[RepValues]:
    n = config.size(2000, 200)
    with open_manager(contender) as manager:
        d = manager.dict()
        for i in range(50):
            d[i % 16] = i
            d[i % 16]

        def once() -> RepValues:
            samples: list[float] = []
            clock = time.perf_counter
            for i in range(n):
                key = i % 64
                t0 = clock()
                d[key] = i
                t1 = clock()
                got = d[key]
                t2 = clock()
                samples += (t1 - t0, t2 - t1)
                if got != i:
                    raise WrongResult(f"d[{key}] = {i} then d[{key}] gave {got!r}")
            return {"manager_dict_rtt": statistics.median(samples) * 1e6}

        return repeat(config, 1, once)


def measure_manager_queue(contender: Contender, config: Config) -> list[RepValues]:
    n = config.size(5000, 500)
    with open_manager(contender) as manager:
        q = manager.Queue()
        for i in range(50):
            q.put(i)
            q.get()

        def once() -> RepValues:
            with Stopwatch() as sw:
                for i in range(n):
                    q.put(i)
                got = [q.get() for _ in range(n)]
            if got != list(range(n)):
                raise WrongResult("the managed queue did not give back the items in order")
            return {"manager_queue_tput": n / sw.seconds}

        return repeat(config, 1, once)


# --- the table ----------------------------------------------------------------------------

HIGHER, LOWER = Direction.HIGHER, Direction.LOWER

BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "map_tiny",
        Kind.POOL,
        (Row("map_tiny", "tasks/s", HIGHER, "pool.map(x*x) over 100k ints, default chunksize"),),
        map_tiny("map_tiny", None, quick_n=10_000),
    ),
    Benchmark(
        "map_tiny_chunk1",
        Kind.POOL,
        (
            Row(
                "map_tiny_chunk1",
                "tasks/s",
                HIGHER,
                "pool.map(x*x) over 100k ints, chunksize=1",
                target=1.5,
            ),
        ),
        map_tiny("map_tiny_chunk1", 1, quick_n=5_000),
    ),
    Benchmark(
        "map_progress",
        Kind.POOL,
        (
            Row("map_chunk1_nobar", "tasks/s", HIGHER, "pool.map(x*x) over 100k ints, chunksize=1, paired with the next row"),
            Row(
                "map_chunk1_bar",
                "tasks/s",
                HIGHER,
                "the same with a progress bar (dmp: progress=; others: tqdm(imap))",
            ),
            Row("map_chunk1_cpu_nobar", "µs", LOWER, "the no-bar map: CPU of the calling process per task"),
            Row("map_chunk1_cpu_bar", "µs", LOWER, "the bar map: CPU of the calling process per task"),
        ),
        measure_map_progress,
    ),
    Benchmark(
        "apply_rtt",
        Kind.POOL,
        (
            Row(
                "apply_rtt_p50",
                "µs",
                LOWER,
                "apply_async(x*x).get(), 2000 sequential round trips: median",
            ),
            Row(
                "apply_rtt_p99",
                "µs",
                LOWER,
                "apply_async(x*x).get(), 2000 sequential round trips: 99th percentile",
            ),
        ),
        measure_apply_rtt,
    ),
    Benchmark(
        "numpy_payload",
        Kind.POOL,
        (
            Row(
                "numpy_payload",
                "MB/s",
                HIGHER,
                "pool.map(identity, 8 x 16 MiB uint8 arrays, chunksize=1); bytes out + back",
                target=3.0,
            ),
        ),
        measure_numpy_payload,
    ),
    Benchmark(
        "pool_startup",
        Kind.POOL,
        (
            Row(
                "pool_startup",
                "ms",
                LOWER,
                "Pool(2) created to first apply() result, median of 10 starts",
            ),
        ),
        measure_pool_startup,
    ),
    Benchmark(
        "manager_dict",
        Kind.MANAGER,
        (
            Row(
                "manager_dict_rtt",
                "µs",
                LOWER,
                "managed dict: d[k] = v and d[k], median per operation",
            ),
        ),
        measure_manager_dict,
    ),
    Benchmark(
        "manager_queue",
        Kind.MANAGER,
        (
            Row(
                "manager_queue_tput",
                "items/s",
                HIGHER,
                "managed Queue: put 5000 items then get them back",
            ),
        ),
        measure_manager_queue,
    ),
)

ROWS: tuple[Row, ...] = tuple(row for bench in BENCHMARKS for row in bench.rows)
BY_NAME: dict[str, Benchmark] = {bench.name: bench for bench in BENCHMARKS}
