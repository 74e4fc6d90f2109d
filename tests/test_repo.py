"""The repository keeps its promises: README commands, CI script, main job."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text, flags=re.S)[:2]


def test_ci_runs_the_readme_test_command() -> None:
    _, test_cmd = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd.strip() in ci.splitlines()


def test_readme_main_job_runs_the_quickstart() -> None:
    main_cmd, _ = readme_commands()
    script = re.search(r"\.venv/bin/python (\S+\.py)", main_cmd)
    assert script is not None, main_cmd
    assert (ROOT / script.group(1)).is_file()


@pytest.mark.timeout(90)
def test_quickstart_prints_the_seed_results() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / "quickstart.py")],
        capture_output=True, text=True, timeout=80, check=True,
    ).stdout
    assert "[1, 4, 9]" in out.splitlines()
    assert out.count("module name: __main__") == 2
    assert "hello bob" in out
    assert "cluster map: " + str([x * x for x in range(40)]) in out
    assert "node-a ran" in out and "node-b ran" in out
    assert "manager and worker nodes shut down" in out
