"""Fixtures that run one test body against the standard library and dmp.

The standard library (fork context) is the oracle: every test parametrised
over ``mp`` must pass with ``[stdlib]`` before its ``[dmp]`` twin counts.

Markers:
    dmp_only     documented improvement of dmp; the stdlib twin is skipped
                 because stdlib hangs, breaks or cannot pickle there.
    stdlib_only  stdlib behaviour dmp does not reproduce by design.
Every use of either marker is listed in DIFFERENCES.md.
"""

from __future__ import annotations

import functools
import multiprocessing
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

IMPLS = ("stdlib", "dmp")
DMP_ONLY_REASON = "documented improvement: stdlib hangs/fails here"
STDLIB_ONLY_REASON = "stdlib behaviour dmp does not reproduce by design (see DIFFERENCES.md)"

#: How long leftover children may take to go away after a test.
LEAK_GRACE_S = 5.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"dmp_only: {DMP_ONLY_REASON}; skipped for stdlib")
    config.addinivalue_line("markers", f"stdlib_only: {STDLIB_ONLY_REASON}; skipped for dmp")


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
        elif impl == "dmp" and item.get_closest_marker("stdlib_only"):
            item.add_marker(pytest.mark.skip(reason=STDLIB_ONLY_REASON))


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


@pytest.fixture(params=IMPLS)
def mp(request: pytest.FixtureRequest) -> Any:
    """The implementation under test: ``multiprocessing`` (fork) or ``dmp``."""
    if request.param == "stdlib":
        return multiprocessing.get_context("fork")
    return load_dmp()


@pytest.fixture(params=IMPLS)
def executor_cls(request: pytest.FixtureRequest) -> Any:
    """``concurrent.futures.ProcessPoolExecutor`` (fork) or ``dmp.Executor``."""
    if request.param == "stdlib":
        return functools.partial(
            ProcessPoolExecutor, mp_context=multiprocessing.get_context("fork")
        )
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
