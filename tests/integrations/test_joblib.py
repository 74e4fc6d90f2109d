"""dmp.joblib: joblib.Parallel and scikit-learn's n_jobs on a real LocalCluster and in local mode.

Every result is compared with loky's (joblib's default backend) or the
sequential one; the cluster is real daemons on loopback (see conftest).
"""

from __future__ import annotations

import inspect
import multiprocessing
import time
import types
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.tree import DecisionTreeClassifier

import dmp
import dmp.joblib
from dmp.client.pool import Pool

from . import _tasks

GRID = {"C": [0.01, 0.1, 1.0, 10.0], "fit_intercept": [True, False]}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return make_classification(n_samples=100, n_features=8, random_state=0)


@pytest.fixture(scope="module")
def on_loky(data: tuple[np.ndarray, np.ndarray]) -> Iterator[dict[str, object]]:
    """The reference results, computed once with loky (its workers shut down after)."""
    X, y = data
    with joblib.parallel_config(backend="loky", n_jobs=2):
        search = GridSearchCV(LogisticRegression(), GRID, cv=3).fit(X, y)
        scores = cross_val_score(DecisionTreeClassifier(random_state=0), X, y, cv=4)
    yield {"grid": search.cv_results_["mean_test_score"], "best": search.best_params_, "cv": scores}
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True, kill_workers=True)


def on_cluster(cluster: dmp.LocalCluster, **kwargs: object) -> joblib.parallel_config:
    return joblib.parallel_config(backend="dmp", address=cluster.address, authkey=cluster.authkey, **kwargs)


def test_gridsearch_matches_loky(cluster, data, on_loky) -> None:
    X, y = data
    with on_cluster(cluster):
        search = GridSearchCV(LogisticRegression(), GRID, cv=3, n_jobs=-1).fit(X, y)
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], on_loky["grid"])
    assert search.best_params_ == on_loky["best"]


def test_cross_val_score_matches_loky(cluster, data, on_loky) -> None:
    X, y = data
    with on_cluster(cluster):
        scores = cross_val_score(DecisionTreeClassifier(random_state=0), X, y, cv=4, n_jobs=-1)
    np.testing.assert_allclose(scores, on_loky["cv"])


def test_minus_one_means_every_slot(cluster) -> None:
    dmp.wait_for_workers(2, timeout=60, address=cluster.address, authkey=cluster.authkey)
    with on_cluster(cluster):
        assert joblib.effective_n_jobs(-1) == 2
        assert joblib.effective_n_jobs(-2) == 1
        assert joblib.effective_n_jobs(5) == 5


def test_generator_yields_in_order(cluster) -> None:
    # Earlier items sleep longer, so they finish last; the generator still yields in order.
    delays = [0.3, 0.2, 0.1, 0.0, 0.0, 0.0]
    with on_cluster(cluster):
        gen = Parallel(n_jobs=-1, return_as="generator")(
            delayed(_tasks.square_after)(i, d) for i, d in enumerate(delays)
        )
        assert isinstance(gen, types.GeneratorType)
        assert list(gen) == [i * i for i in range(len(delays))]


def test_unordered_generator_yields_everything(cluster) -> None:
    with on_cluster(cluster):
        gen = Parallel(n_jobs=-1, return_as="generator_unordered")(
            delayed(_tasks.square_after)(i, 0.0) for i in range(20)
        )
        assert sorted(gen) == [i * i for i in range(20)]


def test_exception_in_fit_reaches_the_caller(cluster, data) -> None:
    X, y = data
    grid = {"fail": [False, True], "C": [0.1, 1.0]}
    with on_cluster(cluster):
        search = GridSearchCV(_tasks.FailingClassifier(), grid, cv=3, n_jobs=-1, error_score="raise")
        with pytest.raises(_tasks.FitFailed, match="fit refused"):
            search.fit(X, y)
        # The backend is usable after the failure.
        assert Parallel(n_jobs=-1)(delayed(pow)(i, 2) for i in range(4)) == [0, 1, 4, 9]


def test_killed_worker_is_retried(cluster, data, tmp_path: Path) -> None:
    X, y = data
    marker = tmp_path / "killed"
    expected = cross_val_score(LogisticRegression(), X, y, cv=3)
    with on_cluster(cluster):
        scores = cross_val_score(_tasks.KillOnceClassifier(str(marker)), X, y, cv=3, n_jobs=-1)
    assert marker.exists()  # a worker really died
    np.testing.assert_allclose(scores, expected)


def test_nested_parallel_runs_on_threads(cluster) -> None:
    with on_cluster(cluster):
        out = Parallel(n_jobs=-1)(delayed(_tasks.nested_backend)(3) for _ in range(2))
    assert out == [("ThreadingBackend", [0, 1, 4])] * 2


def test_sharedmem_falls_back_to_threads_here(cluster) -> None:
    import os

    with on_cluster(cluster):
        pids = Parallel(n_jobs=-1, require="sharedmem")(delayed(os.getpid)() for _ in range(3))
    assert pids == [os.getpid()] * 3


def test_local_mode(data) -> None:
    X, y = data
    expected = GridSearchCV(LogisticRegression(), GRID, cv=3).fit(X, y).cv_results_["mean_test_score"]
    with joblib.parallel_config(backend="dmp"):
        assert joblib.effective_n_jobs(-1) == dmp.cpu_count()
        search = GridSearchCV(LogisticRegression(), GRID, cv=3, n_jobs=2).fit(X, y)
        gen = Parallel(n_jobs=2, return_as="generator")(delayed(_tasks.square_after)(i, 0.0) for i in range(5))
        assert list(gen) == [0, 1, 4, 9, 16]
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], expected)


def test_n_jobs_1_runs_in_this_process(cluster) -> None:
    import os

    with on_cluster(cluster):
        assert Parallel(n_jobs=1)(delayed(os.getpid)() for _ in range(2)) == [os.getpid()] * 2


def test_one_slot_still_runs_on_the_cluster(cluster) -> None:
    import os

    # -2 is "every slot but one": here one slot, which joblib alone would run in this process.
    dmp.wait_for_workers(2, timeout=60, address=cluster.address, authkey=cluster.authkey)
    with on_cluster(cluster):
        assert joblib.effective_n_jobs(-2) == 1
        pids = Parallel(n_jobs=-2)(delayed(os.getpid)() for _ in range(3))
    assert os.getpid() not in pids


@pytest.mark.skipif("task_timeout" not in inspect.signature(Pool).parameters, reason="Pool has no task_timeout yet")
def test_task_timeout_fails_the_task(cluster) -> None:
    with on_cluster(cluster, task_timeout=0.5):
        with pytest.raises(dmp.TaskTimeoutError):
            Parallel(n_jobs=-1)(delayed(_tasks.sleep_for)(s) for s in (0.0, 30.0))


def test_bad_input_is_refused_clearly(cluster) -> None:
    with pytest.raises(TypeError, match="no_such_option"):
        joblib.parallel_config(backend="dmp", no_such_option=1)
    with pytest.raises(ValueError):
        joblib.parallel_config(backend="dmp", address="nonsense://here")
    with on_cluster(cluster), pytest.raises(ValueError, match="n_jobs == 0"):
        Parallel(n_jobs=0)(delayed(pow)(1, 2) for _ in range(1))
    assert dmp.joblib.BACKEND_NAME in joblib.parallel.BACKENDS


def test_parallel_timeout_aborts_and_the_cluster_stays_usable(cluster) -> None:
    with on_cluster(cluster):
        with pytest.raises(multiprocessing.TimeoutError):  # joblib's own timeout error
            Parallel(n_jobs=-1, timeout=0.5)(delayed(_tasks.sleep_for)(s) for s in (0.0, 20.0))
        # The aborted pool's running task is cancelled: its slot frees long before it would end.
        deadline = time.monotonic() + 15.0
        while dmp.status(cluster.address, cluster.authkey)["busy"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert dmp.status(cluster.address, cluster.authkey)["busy"] == 0
        assert Parallel(n_jobs=-1)(delayed(pow)(i, 2) for i in range(4)) == [0, 1, 4, 9]
