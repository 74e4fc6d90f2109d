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
    assert "local-1 ran" in out and "local-2 ran" in out
    assert "manager and worker nodes shut down" in out


@pytest.mark.timeout(90)
def test_readme_remote_manager_example_runs_as_written(tmp_path: Path) -> None:
    import socket
    import time

    text = (ROOT / "README.md").read_text()
    blocks = dict(re.findall(r"<!-- remote-manager: (\w+) -->\n```python\n(.+?)```", text, flags=re.S))
    assert set(blocks) == {"server", "put", "get"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scripts = {}
    for name, code in blocks.items():
        assert "50000" in code
        scripts[name] = tmp_path / f"{name}.py"
        scripts[name].write_text(code.replace("50000", str(port)))
    server = subprocess.Popen([sys.executable, str(scripts["server"])], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            put = subprocess.run([sys.executable, str(scripts["put"])], capture_output=True, text=True, timeout=60)
            if put.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # the server may still be starting
        assert put.returncode == 0, put.stderr
        got = subprocess.run([sys.executable, str(scripts["get"])], capture_output=True, text=True, timeout=60)
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip() == "hello"
    finally:
        server.terminate()
        server.wait(10)


def test_no_test_module_registers_functions_by_value_at_import() -> None:
    """A registration made at import lasts for every later test of the process (an xdist
    worker imports every module) and turns dmp's plain-pickle shortcuts off for all of
    them: modules register while their own tests run (tests/byvalue.py)."""
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if line.startswith("cloudpickle.register_pickle_by_value(")
    ]
    assert offenders == []
