"""Command line of the benchmark suite: runs the benchmarks, prints the table.

    python -m tests.bench [--quick] [--json FILE] [--only ROW ...] [--targets]
    python tests/bench/run.py ...          (the same, from anywhere)

Exit status: 0 when the table was made; 1 when the baseline itself failed
(the runner is broken), with ``--strict`` when any contender errored or
timed out, or with ``--targets`` when a row missed or could not show its
target; 2 on bad arguments.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make ``tests.bench`` importable
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p and str(Path(p).resolve()) != _here]
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import dataclasses
import json
import time

from tests.bench.benchmarks import BENCHMARKS
from tests.bench.contenders import BASELINE, CANDIDATE, CONTENDERS
from tests.bench.framework import Benchmark, Config, Outcome
from tests.bench.report import Outcomes, render_table, to_json, verdict
from tests.bench.runner import run_inline, run_isolated

#: Seconds one benchmark may take on one contender before it is killed.
TIMEOUT_S = {"full": 180.0, "quick": 20.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    row_names = [row.name for bench in BENCHMARKS for row in bench.rows]
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="Benchmarks dmp beside multiprocessing (fork) and prints absolute numbers and ratios.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, 1 repetition (a smoke run, ~15 s)"
    )
    parser.add_argument(
        "--json", metavar="FILE", type=Path, help="also write the raw numbers as JSON to FILE"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="ROW",
        help=f"run only these rows or benchmarks: {', '.join(row_names)}",
    )
    parser.add_argument(
        "--targets", action="store_true", help="exit 1 unless dmp meets the target on every row run"
    )
    parser.add_argument(
        "--contenders", nargs="+", metavar="NAME", choices=list(CONTENDERS),
        help=f"columns to run (default: {', '.join(n for n, c in CONTENDERS.items() if c.default)}; "
        f"also: {', '.join(n for n, c in CONTENDERS.items() if not c.default)}); {BASELINE} always runs",
    )  # fmt: skip
    parser.add_argument(
        "--reps", type=int, default=3, help="repetitions per benchmark in a full run (default 3)"
    )
    parser.add_argument("--processes", type=int, default=2, help="pool size (default 2)")
    parser.add_argument(
        "--timeout", type=float, help="seconds per benchmark and contender (default 180, quick 20)"
    )
    parser.add_argument(
        "--inline", action="store_true", help="run in this process, not one child per benchmark"
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when any contender errors or times out"
    )
    parser.add_argument(
        "--list", action="store_true", help="list the rows and their targets, then exit"
    )
    args = parser.parse_args(argv)
    if args.only:
        known = set(row_names) | {bench.name for bench in BENCHMARKS}
        unknown = [name for name in args.only if name not in known]
        if unknown:
            parser.error(f"unknown row(s) {', '.join(unknown)}; known: {', '.join(row_names)}")
    if args.reps < 1 or args.processes < 1:
        parser.error("--reps and --processes must be at least 1")
    return args


def select(only: list[str] | None) -> list[Benchmark]:
    """The benchmarks to run, each cut down to the rows asked for (a
    benchmark's name asks for all its rows)."""
    if not only:
        return list(BENCHMARKS)
    wanted = set(only)
    chosen = []
    for bench in BENCHMARKS:
        rows = (
            bench.rows if bench.name in wanted else tuple(r for r in bench.rows if r.name in wanted)
        )
        if rows:
            chosen.append(dataclasses.replace(bench, rows=rows))
    return chosen


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_all(
    benches: list[Benchmark], contenders: list[str], config: Config, timeout_s: float, inline: bool
) -> Outcomes:
    outcomes: Outcomes = {}
    timed_out: dict[str, str] = {}  # contender -> the benchmark it hung in
    for i, bench in enumerate(benches, 1):
        for name in contenders:
            label = f"[{i}/{len(benches)}] {bench.name} on {name}"
            t0 = time.monotonic()
            if name in timed_out:
                outcome = Outcome("skipped", f"after a timeout in {timed_out[name]}")
            elif inline:
                outcome = run_inline(bench, name, config)
            else:
                outcome = run_isolated(bench, name, config, timeout_s)
            if outcome.status == "timeout":
                timed_out[name] = bench.name
            outcomes.setdefault(bench.name, {})[name] = outcome
            detail = f": {outcome.reason}" if outcome.reason else ""
            progress(f"{label}: {outcome.status} in {time.monotonic() - t0:.1f}s{detail}")
    return outcomes


def exit_status(args: argparse.Namespace, benches: list[Benchmark], outcomes: Outcomes) -> int:
    problems = []
    for bench in benches:
        got = outcomes[bench.name]
        if got[BASELINE].status != "ok":
            problems.append(f"baseline {BASELINE} failed {bench.name}: {got[BASELINE].reason}")
        if args.strict:
            problems += [
                f"{c} {o.status} in {bench.name}"
                for c, o in got.items()
                if o.status in ("error", "timeout")
            ]
        if args.targets:
            for row in bench.rows:
                v = verdict(row, got)
                if v.mark != "ok":
                    shown = "not measured" if v.ratio is None else f"{v.ratio:.2f}x"
                    problems.append(f"{row.name}: {CANDIDATE} {shown}, target >= {row.target:.1f}x")
    for problem in problems:
        progress(f"FAIL: {problem}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    benches = select(args.only)
    if args.list:
        for bench in benches:
            for row in bench.rows:
                print(f"{row.name:20} {row.unit:8} target >= {row.target:.1f}x  {row.description}")
        return 0
    wanted = args.contenders or [n for n, c in CONTENDERS.items() if c.default]
    contenders = [n for n in CONTENDERS if n == BASELINE or n in wanted]  # column order
    config = Config(quick=args.quick, reps=args.reps, processes=args.processes)
    timeout_s = args.timeout or TIMEOUT_S["quick" if args.quick else "full"]
    outcomes = run_all(benches, contenders, config, timeout_s, args.inline)
    print(render_table(benches, outcomes, contenders, config), flush=True)
    if args.json:
        args.json.write_text(
            json.dumps(to_json(benches, outcomes, contenders, config), indent=2) + "\n"
        )
        progress(f"raw numbers written to {args.json}")
    return exit_status(args, benches, outcomes)


if __name__ == "__main__":
    sys.exit(main())
