"""deploy/slurm/dmp.sbatch on a real (single-host) Slurm: sbatch runs a Pool.map, scancel leaves nothing.

Needs root and Slurm's daemons (``slurmctld``, ``slurmd``, ``munge``: .ci/run
installs them from the distribution's packages when missing).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.slurm import Slurm, missing_binaries

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "deploy" / "slurm" / "dmp.sbatch"

pytestmark = [pytest.mark.timeout(300)]

JOB = """\
import os, socket, sys, time
import dmp

def where(x):
    return x * x, os.getpid()

if __name__ == "__main__":
    with dmp.Pool() as pool:
        results = pool.map(where, range(40), chunksize=1)
    print("sum", sum(r for r, _ in results), "pids", len({p for _, p in results}), flush=True)
    print("address", os.environ["DMP_ADDRESS"], flush=True)
    if sys.argv[1:] == ["linger"]:
        print("lingering", flush=True)
        time.sleep(600)
"""


@pytest.fixture(scope="module")
def slurm() -> Iterator[Slurm]:
    missing = missing_binaries()
    if missing or os.geteuid() != 0:
        why = f"missing {missing}" if missing else "not root"
        if os.environ.get("CI"):
            pytest.fail(f"Slurm recipe test cannot run ({why}); .ci/run installs slurmctld, slurmd and munge")
        pytest.skip(why)
    with Slurm() as cluster:
        yield cluster


def submit(slurm: Slurm, tmp_path: Path, *args: str) -> tuple[str, Path, Path]:
    (tmp_path / "job.py").write_text(JOB)
    run_dir = tmp_path / "run"
    out = tmp_path / "out.txt"
    env = {
        **slurm.env,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DMP_PYTHON": sys.executable,
        "DMP_RUN_DIR": str(run_dir),
        "DMP_BIND_HOST": "127.0.0.1",  # tests only talk to loopback
        "DMP_JOIN_TIMEOUT": "120",
    }
    env.pop("DMP_ADDRESS", None)
    env.pop("DMP_AUTHKEY", None)
    done = subprocess.run(
        ["sbatch", "--parsable", f"--cpus-per-task={slurm.cpus}", "-o", str(out), "-D", str(tmp_path),
         str(SBATCH), str(tmp_path / "job.py"), *args],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )
    return done.stdout.strip().split(";")[0], out, run_dir


def wait_for_line(path: Path, text: str, slurm: Slurm, job: str, timeout: float = 180.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = path.read_text() if path.exists() else ""
        if text in body:
            return body
        if slurm.job_state(job) == "" and text not in body:
            break
        time.sleep(0.3)
    pytest.fail(f"job {job} never printed {text!r}; output:\n{body}\n{slurm.logs()}")


def assert_no_process_left(slurm: Slurm, run_dir: Path, timeout: float = 30.0) -> None:
    """Slurm reports a job gone while its processes may still be exiting: wait for them, boundedly."""
    deadline = time.monotonic() + timeout
    while (left := slurm.processes_mentioning(str(run_dir))) and time.monotonic() < deadline:
        time.sleep(0.3)
    described = []
    for pid in left:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue
        # ppid 1: an orphan, outside the step's process tree that Slurm kills and waits for
        described.append(f"pid {pid} (ppid {ppid}): {cmdline}")
    assert described == [], described


def test_sbatch_runs_a_pool_map_on_the_allocation(slurm: Slurm, tmp_path: Path) -> None:
    job, out, run_dir = submit(slurm, tmp_path)
    slurm.wait_job_gone(job, timeout=180)
    body = out.read_text()
    assert f"sum {sum(x * x for x in range(40))}" in body, body + slurm.logs()
    assert f"dmp.sbatch: {slurm.cpus} slots joined" in body, body
    assert "address tcp://127.0.0.1:" in body
    assert not run_dir.exists(), "the run directory (key, manager file) outlived the job"
    assert_no_process_left(slurm, run_dir)


def test_scancel_mid_job_leaves_no_dmp_process(slurm: Slurm, tmp_path: Path) -> None:
    job, out, run_dir = submit(slurm, tmp_path, "linger")
    wait_for_line(out, "lingering", slurm, job)
    assert slurm.processes_mentioning(str(run_dir)), "the job's daemons should be running now"
    slurm.run(["scancel", job])
    slurm.wait_job_gone(job, timeout=60)
    assert_no_process_left(slurm, run_dir)
