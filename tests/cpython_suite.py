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


def patch_in_dmp() -> None:
    import multiprocessing.managers as std_managers

    import dmp
    import dmp.managers

    for name in set(multiprocessing.__all__) - KEEP:
        setattr(multiprocessing, name, getattr(dmp, name))
    for name in ("BaseManager", "SyncManager", "BaseProxy", "Token", "MakeProxyType", "AutoProxy"):
        setattr(std_managers, name, getattr(dmp.managers, name))


class _Timeout(BaseException):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout(f"test still running after {PER_TEST_S} s")


class Result(unittest.TextTestResult):
    def startTest(self, test: unittest.TestCase) -> None:
        signal.alarm(PER_TEST_S)
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        signal.alarm(0)
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

_suite.install_tests_in_module_dict(globals(), "fork")


def main() -> int:
    args = ARGS
    module = sys.modules[__name__]
    loader = unittest.TestLoader()
    if args.k:
        loader.testNamePatterns = [f"*{k}*" for k in args.k]
    tests = loader.loadTestsFromModule(module)
    signal.signal(signal.SIGALRM, _alarm)
    t0 = time.monotonic()
    setUpModule()  # type: ignore[name-defined]  # noqa: F821 (installed above)
    try:
        runner = unittest.TextTestRunner(resultclass=Result, verbosity=1, stream=sys.stderr)
        result = runner.run(tests)
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
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(2)
