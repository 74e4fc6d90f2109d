"""Fixtures that run one test body against the standard library, dmp local and dmp cluster.

The standard library (fork context) is the oracle: every test parametrised
over ``mp`` must pass with ``[stdlib]`` before its ``[dmp]`` (local mode) and
``[cluster]`` twins count. ``[cluster]`` runs against a loopback ``dmp manager``
and two worker nodes of two processes each, started once per session (per
xdist worker) by tests/daemons.py, after ``dmp.connect(address)``.

Markers:
    dmp_only     documented improvement of dmp; the stdlib twin is skipped
                 because stdlib hangs, breaks or cannot pickle there.
    stdlib_only  stdlib behaviour dmp does not reproduce by design.
    local_only(reason)  holds on one host only; the cluster twin is skipped.
    cluster_bug(reason, hangs=False)  a known bug of cluster mode: the cluster
                 twin is a strict xfail (not run at all when it hangs), so a
                 fix shows up as XPASS and the marker must go.
Every use of these markers is listed in docs/differences.md.
"""

from __future__ import annotations

import functools
import multiprocessing
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.daemons import ROOT, Daemons

IMPLS = ("stdlib", "dmp", "cluster")
DMP_ONLY_REASON = "documented improvement: stdlib hangs/fails here"
STDLIB_ONLY_REASON = "stdlib behaviour dmp does not reproduce by design (see docs/differences.md)"

#: How long leftover children may take to go away after a test.
LEAK_GRACE_S = 5.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"dmp_only: {DMP_ONLY_REASON}; skipped for stdlib")
    config.addinivalue_line("markers", f"stdlib_only: {STDLIB_ONLY_REASON}; skipped for dmp")
    config.addinivalue_line("markers", "local_only(reason): holds on one host only; skipped for cluster")
    config.addinivalue_line("markers", "cluster_bug(reason, hangs=False): known cluster-mode bug; strict xfail for cluster")


def _impl_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    for name in ("mp", "executor_cls"):
        if name in callspec.params:
            return str(callspec.params[name])
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        impl = _impl_of(item)
        if impl == "stdlib" and item.get_closest_marker("dmp_only"):
            item.add_marker(pytest.mark.skip(reason=DMP_ONLY_REASON))
        elif impl in ("dmp", "cluster") and item.get_closest_marker("stdlib_only"):
            item.add_marker(pytest.mark.skip(reason=STDLIB_ONLY_REASON))
        elif impl == "cluster" and (local := item.get_closest_marker("local_only")):
            reason = local.args[0] if local.args else local.kwargs.get("reason", "local mode only")
            item.add_marker(pytest.mark.skip(reason=f"local mode only: {reason}"))
        elif impl == "cluster" and (bug := item.get_closest_marker("cluster_bug")):
            reason = bug.args[0] if bug.args else bug.kwargs.get("reason", "")
            item.add_marker(pytest.mark.xfail(
                reason=f"known cluster-mode bug: {reason}", strict=True, run=not bug.kwargs.get("hangs", False)
            ))


def load_dmp() -> Any:
    """Imports dmp, or skips the test when the library does not exist yet."""
    try:
        import dmp
    except ImportError as exc:
        pytest.skip(f"dmp is not importable yet: {exc!r}")
    if getattr(dmp, "__file__", None) is None:
        # Without dmp/__init__.py, ``import dmp`` yields an empty namespace
        # package: the library is not written yet, which is the same case.
        pytest.skip("dmp is not importable yet: dmp/__init__.py does not exist (namespace package)")
    return dmp


@pytest.fixture(scope="session")
def loopback_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemons]:
    """One manager and two nodes of two workers, for every ``[cluster]`` test of this session.

    The nodes import this suite's modules by name, as a user's nodes import
    the user's: the tests directory is on their path.
    """
    logdir: Path = tmp_path_factory.mktemp("conformance-cluster")
    cluster = Daemons(logdir)
    cluster.env["PYTHONPATH"] = f"{ROOT / 'tests'}:{cluster.env['PYTHONPATH']}"
    cluster.start(nodes=2, processes=2)
    try:
        yield cluster
    finally:
        cluster.stop()


def _connect(request: pytest.FixtureRequest) -> Any:
    """dmp, with the session's loopback cluster as the default for this test only."""
    dmp = load_dmp()
    cluster = request.getfixturevalue("loopback_cluster")
    monkeypatch = request.getfixturevalue("monkeypatch")
    from dmp import _config

    monkeypatch.setattr(_config, "_connected", None)  # restored after the test: local mode again
    dmp.connect(cluster.address, cluster.authkey)
    return dmp


@pytest.fixture(params=IMPLS)
def mp(request: pytest.FixtureRequest) -> Any:
    """The implementation under test: ``multiprocessing`` (fork), ``dmp`` (local) or ``dmp`` connected to a cluster."""
    if request.param == "stdlib":
        return multiprocessing.get_context("fork")
    if request.param == "cluster":
        return _connect(request)
    return load_dmp()


@pytest.fixture(params=IMPLS)
def executor_cls(request: pytest.FixtureRequest) -> Any:
    """``concurrent.futures.ProcessPoolExecutor`` (fork) or ``dmp.Executor`` (local or cluster)."""
    if request.param == "stdlib":
        return functools.partial(
            ProcessPoolExecutor, mp_context=multiprocessing.get_context("fork")
        )
    if request.param == "cluster":
        return _connect(request).Executor
    return load_dmp().Executor


def _live_children() -> dict[int | None, Any]:
    """Children visible through ``active_children()`` (which also reaps the
    dead ones), keyed by pid. dmp's own list is consulted when dmp exists."""
    found = {p.pid: p for p in multiprocessing.active_children()}
    dmp = sys.modules.get("dmp")
    own = getattr(dmp, "active_children", None)
    if own is not None and own is not multiprocessing.active_children:
        found.update({p.pid: p for p in own()})
    return found


@pytest.fixture(autouse=True)
def no_leaked_children() -> Iterator[None]:
    """Fails a test that leaves child processes behind, then kills them.

    A pool that was terminated or joined, and a process that was joined, are
    gone from ``active_children()`` within a few seconds. Infrastructure a
    library keeps for the session must not appear there (stdlib's forkserver
    and resource tracker do not either): user code that terminates every
    active child would kill it.
    """
    before = set(_live_children())
    yield
    deadline = time.monotonic() + LEAK_GRACE_S
    leaked = {pid: p for pid, p in _live_children().items() if pid not in before}
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = {pid: p for pid, p in _live_children().items() if pid not in before}
    if not leaked:
        return
    names = sorted(f"{getattr(p, 'name', '?')} (pid {pid})" for pid, p in leaked.items())
    for p in leaked.values():
        try:
            p.kill()
            p.join(5)
        except Exception:
            pass
    pytest.fail(f"test leaked {len(leaked)} child process(es): {', '.join(names)}", pytrace=False)
