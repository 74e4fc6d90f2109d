"""CPython's own multiprocessing test suite with dmp swapped in; run by hand.

    python tests/cpython_suite.py dmp [-k PATTERN] [--out FILE]
    python tests/cpython_suite.py stdlib            (the same run, unpatched)

The suite (``test._test_multiprocessing``) is built for the fork start
method with ``install_tests_in_module_dict``. For ``dmp`` the public names of
``multiprocessing`` (Pool, Process, Queue, Lock, Manager, ...) and of
``multiprocessing.managers`` are replaced by dmp's before the suite is
imported, so its mixins and test bodies use dmp. Each test gets
``PER_TEST_S`` seconds (SIGALRM), so a hang is a failure, never a stuck run.
Prints the counts and writes every failing test id with its reason to
``--out``. Not collected by pytest (the name does not start with ``test_``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import time
import traceback
import unittest
from typing import Any

PER_TEST_S = 60

# dmp names that must stay the standard library's: the suite drives the
# start method and the logger through them.
KEEP = {"set_start_method", "get_start_method", "get_context", "get_all_start_methods",
        "get_logger", "log_to_stderr", "set_executable", "set_forkserver_preload",
        "allow_connection_pickling", "reducer", "freeze_support", "current_process",
        "active_children", "parent_process", "cpu_count"}


_MANAGER_NAMES = ("BaseManager", "SyncManager", "BaseProxy", "Token", "MakeProxyType", "AutoProxy")
_saved: dict[str, Any] = {}


def restore_managers_module() -> None:
    """Once the suite imported dmp's manager names, multiprocessing.managers gets
    its own back: its SharedMemoryManager subclasses (and calls) its BaseManager."""
    import multiprocessing.managers as std_managers

    for name, value in _saved.items():
        setattr(std_managers, name, value)


def patch_in_dmp() -> None:
    import multiprocessing.managers as std_managers

    import dmp
    import dmp.managers

    for name in set(multiprocessing.__all__) - KEEP:
        setattr(multiprocessing, name, getattr(dmp, name))
    for name in _MANAGER_NAMES:
        _saved[name] = getattr(std_managers, name)
        setattr(std_managers, name, getattr(dmp.managers, name))
    # The suite's ManagerMixin.tearDownClass asks the manager, before shutting
    # it down, for its object count (a private debugging call no test asserts
    # on). dmp has none: answer "none left" so that the teardown goes on to
    # shut the manager down.
    dmp.managers.BaseManager._number_of_objects = lambda self: 0  # type: ignore[attr-defined]


class _Timeout(BaseException):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout(f"test still running after {PER_TEST_S} s")


class Result(unittest.TextTestResult):
    def startTest(self, test: unittest.TestCase) -> None:
        signal.alarm(PER_TEST_S)
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        # Re-armed, not cleared: a hang in the class teardown or setup that
        # follows fails that fixture instead of stopping the run.
        signal.alarm(PER_TEST_S)
        super().stopTest(test)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("impl", choices=["stdlib", "dmp"])
    parser.add_argument("-k", action="append", default=[], help="only tests whose id contains this")
    parser.add_argument("--out", default=None, help="write failing test ids and reasons here")
    return parser.parse_args()


# The suite is installed at import (also in the children that spawn or
# forkserver start, which re-import this script as __mp_main__ with the
# parent's argv), so that its classes unpickle there.
ARGS = _parse()
if ARGS.impl == "dmp":
    patch_in_dmp()
import test._test_multiprocessing as _suite  # noqa: E402

restore_managers_module()
_suite.install_tests_in_module_dict(globals(), "fork")


def main() -> int:
    args = ARGS
    module = sys.modules[__name__]
    loader = unittest.TestLoader()
    if args.k:
        loader.testNamePatterns = [f"*{k}*" for k in args.k]
    tests = loader.loadTestsFromModule(module)
    signal.signal(signal.SIGALRM, _alarm)
    # A job started in the background (``cmd &``) inherits SIGINT ignored; the
    # suite's Ctrl-C tests need Python's default handler, as in a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.monotonic()
    setUpModule()  # type: ignore[name-defined]  # noqa: F821 (installed above)
    try:
        runner = unittest.TextTestRunner(resultclass=Result, verbosity=1, stream=sys.stderr)
        result = runner.run(tests)
        signal.alarm(0)
    finally:
        tearDownModule()  # type: ignore[name-defined]  # noqa: F821
    bad = [(t.id(), "FAIL", tb) for t, tb in result.failures] + [(t.id(), "ERROR", tb) for t, tb in result.errors]
    bad += [(t.id(), "UNEXPECTED SUCCESS", "") for t in result.unexpectedSuccesses]
    print(f"{args.impl}: ran {result.testsRun}, passed "
          f"{result.testsRun - len(bad) - len(result.skipped) - len(result.expectedFailures)}, "
          f"failed {len(result.failures)}, errors {len(result.errors)}, skipped {len(result.skipped)}, "
          f"expected failures {len(result.expectedFailures)} in {time.monotonic() - t0:.0f} s")
    if args.out:
        with open(args.out, "w") as fh:
            for test_id, kind, tb in sorted(bad):
                last = tb.strip().splitlines()[-1] if tb.strip() else ""
                fh.write(f"{kind} {test_id}: {last}\n")
    return 0 if not bad else 1


if __name__ == "__main__":
    # Run from the importable module tests.cpython_suite, as CPython runs the
    # suite from test.test_multiprocessing_fork: classes pickle by reference
    # (cloudpickle would send __main__'s test classes by value).
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tests.cpython_suite as _module

    try:
        sys.exit(_module.main())
    except Exception:
        traceback.print_exc()
        sys.exit(2)
