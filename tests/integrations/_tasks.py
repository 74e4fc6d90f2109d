"""Estimators and task functions the integration tests send to dmp workers (by value)."""

from __future__ import annotations

import os
import signal
import time

from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression


class FitFailed(Exception):
    """Raised by FailingClassifier.fit: the caller must see this very type."""


class FailingClassifier(ClassifierMixin, BaseEstimator):
    """A LogisticRegression whose fit raises FitFailed when ``fail`` is true."""

    def __init__(self, fail: bool = False, C: float = 1.0) -> None:
        self.fail = fail
        self.C = C

    def fit(self, X, y):
        if self.fail:
            raise FitFailed(f"fit refused with C={self.C}")
        self.model_ = LogisticRegression(C=self.C).fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict(self, X):
        return self.model_.predict(X)


class KillOnceClassifier(ClassifierMixin, BaseEstimator):
    """A LogisticRegression whose first fit anywhere SIGKILLs its own worker process.

    The marker file says the kill happened, so the retried task fits normally.
    """

    def __init__(self, marker: str = "", C: float = 1.0) -> None:
        self.marker = marker
        self.C = C

    def fit(self, X, y):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
        self.model_ = LogisticRegression(C=self.C).fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict(self, X):
        return self.model_.predict(X)


def square_after(x: int, delay: float) -> int:
    time.sleep(delay)
    return x * x


def nested_backend(n: int) -> tuple[str, list[int]]:
    """Run a nested Parallel inside a task; which backend it got, and its results."""
    from joblib import Parallel, delayed
    from joblib.parallel import get_active_backend

    backend, _ = get_active_backend()
    out = Parallel(n_jobs=2)(delayed(pow)(i, 2) for i in range(n))
    return type(backend).__name__, out


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
