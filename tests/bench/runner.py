"""Runs one benchmark on one contender, by default in a child process.

    run.py (parent)                         child: python -m tests.bench.runner
      run_isolated(bench, contender) --argv-->  run_inline(bench, contender)
                                                  contender.setup() / measure / teardown
      reads Outcome JSON  <--------- file ----  writes Outcome JSON
      kills the child's process group on timeout, and anything it left behind

A child per (benchmark, contender) keeps one library's threads, sockets and
leftover processes from touching the other's numbers, and lets a hang
become a "timeout" cell instead of a hung run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from tests.bench.benchmarks import BY_NAME
from tests.bench.contenders import CONTENDERS, REPO_ROOT, NotAvailable
from tests.bench.framework import Benchmark, Config, Outcome

#: How long a finished child's leftover processes get to exit by themselves.
LEFTOVER_GRACE_S = 2.0


def run_inline(bench: Benchmark, contender_name: str, config: Config) -> Outcome:
    """Runs ``bench`` on the contender in this process; never raises."""
    contender = CONTENDERS[contender_name]()
    t0 = time.perf_counter()
    try:
        try:
            contender.setup(config)
            reps = bench.measure(contender, config)
        finally:
            contender.teardown()
    except NotAvailable as exc:
        return Outcome("n/a", str(exc), elapsed_s=time.perf_counter() - t0)
    except Exception as exc:
        last = traceback.extract_tb(exc.__traceback__)[-1]
        where = f" (at {Path(last.filename).name}:{last.lineno})"
        return Outcome(
            "error",
            f"{type(exc).__name__}: {exc}{where}",
            elapsed_s=time.perf_counter() - t0,
            detail=traceback.format_exc(),
        )
    return Outcome("ok", reps=reps, elapsed_s=time.perf_counter() - t0)


def child_env() -> dict[str, str]:
    """The environment that lets a child import tests.bench, dmp and dmp_server
    from the work tree, as pytest's ``pythonpath`` setting does."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT), str(REPO_ROOT / "server")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _tail(path: Path, limit: int = 600) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return text[-limit:]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_group(pgid: int) -> bool:
    """Waits briefly for the child's process group to empty, then kills what
    is left. True when something had to be killed."""
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while _group_alive(pgid):
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            return True
        time.sleep(0.05)
    return False


def run_isolated(
    bench: Benchmark, contender_name: str, config: Config, timeout_s: float
) -> Outcome:
    """Runs ``bench`` on the contender in a child process; never raises."""
    with tempfile.TemporaryDirectory(prefix="dmp-bench-") as tmp:
        out, log = Path(tmp) / "outcome.json", Path(tmp) / "child.log"
        argv = [
            sys.executable, "-m", "tests.bench.runner",
            "--benchmark", bench.name, "--contender", contender_name,
            "--config", json.dumps(config.__dict__), "--out", str(out),
        ]  # fmt: skip
        t0 = time.perf_counter()
        with open(log, "wb") as log_file:
            # Its own session, so its pool workers share one process group
            # that can be killed as a whole.
            proc = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=child_env(), stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                _reap_group(proc.pid)
                if out.exists():  # measured, then hung on the way out
                    outcome = Outcome.from_json(json.loads(out.read_text()))
                    outcome.reason = f"hung at exit after measuring (killed after {timeout_s:.0f}s)"
                    return outcome
                return Outcome(
                    "timeout",
                    f"no result within {timeout_s:.0f}s",
                    elapsed_s=time.perf_counter() - t0,
                )
        leftovers = _reap_group(proc.pid)
        try:
            outcome = Outcome.from_json(json.loads(out.read_text()))
        except (OSError, ValueError, KeyError) as exc:
            detail = _tail(log) or f"{type(exc).__name__}: {exc}"
            return Outcome("error", f"child exited with code {proc.returncode}: {detail}",
                           elapsed_s=time.perf_counter() - t0)  # fmt: skip
        if leftovers and outcome.status == "ok":
            outcome.reason = "left processes running after the benchmark (killed)"
        return outcome


def child_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one benchmark on one contender (internal)")
    parser.add_argument("--benchmark", required=True, choices=sorted(BY_NAME))
    parser.add_argument("--contender", required=True, choices=sorted(CONTENDERS))
    parser.add_argument("--config", required=True, help="Config fields as JSON")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    config = Config(**json.loads(args.config))
    outcome = run_inline(BY_NAME[args.benchmark], args.contender, config)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(outcome.to_json()))
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
