"""``python -m tests.bench.gridsearch``: one GridSearchCV under loky and under dmp, wall times side by side.

A grid of a few dozen small fits (SVC on ``make_classification``) runs with
``n_jobs=-1`` under joblib's loky backend with N workers, then under the
"dmp" backend on a loopback ``LocalCluster`` of the same total size (nodes x
processes = N), then under dmp's local mode with N processes. Each is
warmed up once (worker start, imports), then timed ``--repeat`` times;
the table gives the median and best. A measurement, not a test: nothing is
asserted except that every backend found the same best parameters.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# Every contender gets one BLAS/OpenMP thread per worker (loky sets this for its
# own workers; the dmp node daemons inherit it from here), so the comparison
# is of the backends, not of thread oversubscription.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import joblib  # noqa: E402
from sklearn.datasets import make_classification  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

import dmp  # noqa: E402
import dmp.joblib  # noqa: E402  (registers the "dmp" backend)


def _search(X, y, grid: dict, cv: int) -> tuple[float, dict]:
    start = time.perf_counter()
    search = GridSearchCV(SVC(), grid, cv=cv, n_jobs=-1).fit(X, y)
    return time.perf_counter() - start, search.best_params_


def _timed(config: joblib.parallel_config, X, y, grid: dict, cv: int, repeat: int) -> tuple[list[float], dict]:
    with config:
        _search(X, y, grid, cv)  # warm-up: workers start, sklearn imported there
        runs = [_search(X, y, grid, cv) for _ in range(repeat)]
    return [t for t, _ in runs], runs[-1][1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2, help="LocalCluster nodes (default 2)")
    parser.add_argument("--processes", type=int, default=1, help="worker processes per node (default 1)")
    parser.add_argument("--samples", type=int, default=300, help="rows in the data set (default 300)")
    parser.add_argument("--cv", type=int, default=3, help="folds (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per backend (default 3)")
    args = parser.parse_args(argv)

    size = args.nodes * args.processes
    X, y = make_classification(n_samples=args.samples, n_features=20, random_state=0)
    grid = {"C": [0.1, 1.0, 10.0, 100.0], "gamma": ["scale", 0.01, 0.1]}
    fits = len(grid["C"]) * len(grid["gamma"]) * args.cv
    print(f"GridSearchCV(SVC), {fits} fits of {args.samples} rows, {size} workers per backend, "
          f"median/best of {args.repeat} after one warm-up")

    rows: list[tuple[str, list[float], dict]] = []
    times, best = _timed(joblib.parallel_config(backend="loky", n_jobs=size), X, y, grid, args.cv, args.repeat)
    rows.append((f"loky ({size} workers)", times, best))
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True, kill_workers=True)
    with dmp.LocalCluster(nodes=args.nodes, processes=args.processes) as cluster:
        config = joblib.parallel_config(backend="dmp", address=cluster.address, authkey=cluster.authkey)
        times, best = _timed(config, X, y, grid, args.cv, args.repeat)
        rows.append((f"dmp cluster ({args.nodes}x{args.processes}, loopback)", times, best))
    times, best = _timed(joblib.parallel_config(backend="dmp", n_jobs=size), X, y, grid, args.cv, args.repeat)
    rows.append((f"dmp local ({size} processes)", times, best))

    base = statistics.median(rows[0][1])
    print(f"{'backend':<34} {'median s':>9} {'best s':>9} {'vs loky':>8}")
    for name, times, _ in rows:
        med = statistics.median(times)
        print(f"{name:<34} {med:>9.2f} {min(times):>9.2f} {med / base:>7.2f}x")
    bests = {repr(sorted(b.items())) for _, _, b in rows}
    print("same best parameters everywhere" if len(bests) == 1 else f"best parameters differ: {bests}")


if __name__ == "__main__":
    main()
