"""Keeps the benchmark runner from rotting: runs it in --quick mode.

No timing is asserted anywhere: only that the runner finishes, prints a
table with every row, and measured the baseline. dmp's column may hold
numbers, "n/a" (dmp not importable yet), "error" or "timeout"; none of
those fail this test (dmp's correctness is the conformance suite's job).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.benchmarks import ROWS
from tests.bench.contenders import BASELINE, CANDIDATE, REPO_ROOT
from tests.bench.framework import Direction, Row, percentile, ratio
from tests.bench.runner import child_env


@pytest.mark.timeout(120)
def test_quick_run_prints_every_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--quick", "--json", str(out)],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("row "))
    assert BASELINE in header and CANDIDATE in header and "ratio" in header
    for row in ROWS:
        assert any(line.startswith(row.name + " ") for line in lines), (
            f"row {row.name} missing:\n{proc.stdout}"
        )

    data = json.loads(out.read_text())
    assert [r["name"] for r in data["rows"]] == [row.name for row in ROWS]
    for r in data["rows"]:
        base = r["results"][BASELINE]
        assert base["status"] == "ok", r
        assert base["median"] > 0, r
        assert r["results"][CANDIDATE]["status"] in {"ok", "n/a", "error", "timeout", "skipped"}, r


def test_script_entry_point_lists_rows() -> None:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("run.py")), "--list"],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()] == [row.name for row in ROWS]


def test_ratio_is_oriented_so_above_one_means_candidate_better() -> None:
    fast = Row("t", "tasks/s", Direction.HIGHER, "")
    slow = Row("l", "µs", Direction.LOWER, "")
    assert ratio(fast, 100.0, 300.0) == pytest.approx(3.0)
    assert ratio(slow, 300.0, 100.0) == pytest.approx(3.0)
    assert ratio(fast, None, 1.0) is None
    assert ratio(slow, 1.0, 0.0) is None


def test_percentile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0


@pytest.mark.timeout(180)
def test_scale_quick_runs_the_real_manager_against_simulated_peers(tmp_path: Path) -> None:
    """``python -m tests.bench.scale --quick``: one tiny configuration, every result checked by the
    simulated clients, the manager's CPU read from /proc; only that the rows exist is asserted."""
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bench.scale", "--quick", "--json", str(out)],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    rows = json.loads(out.read_text())
    runs = [r for r in rows if "tasks" in r]
    assert [(r["workers"], r["clients"], r["chunk"] == 1) for r in runs] == [(4, 2, True), (4, 2, False)]
    for r in runs:
        assert r["items"] == r["tasks"] * r["chunk"] and r["cpu_s"] > 0 and r["wall_s"] > 0
        assert 1 <= r["tasks_per_dispatch"] <= r["tasks"]  # every task went out in some Dispatch
    (idle,) = [r for r in rows if "idle_workers" in r]
    assert idle["idle_workers"] == 20 and idle["cpu_pct"] >= 0
    assert "idle: 20 workers on 2 nodes" in proc.stdout
