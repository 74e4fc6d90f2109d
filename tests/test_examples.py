"""docs/examples: each program prints the same under dmp (local and cluster) as under multiprocessing.

Every example is an ordinary ``import multiprocessing`` program; docs/examples/run.py
runs it against the standard library (``stdlib``) or with dmp answering that import
(``dmp``). Each runs as a real subprocess, three ways: ``stdlib`` (the oracle), ``dmp``
in local mode, and ``dmp`` with DMP_ADDRESS/DMP_AUTHKEY naming a loopback manager
with two worker nodes of two processes each (tests/daemons.py). Their stdout must be
identical to the standard library's.

The cluster has an authkey, as every cluster off loopback must: DMP_AUTHKEY is
then also the key of the managers the examples start themselves, which is how
a Process on a node can use their proxies (docs/managers.md). The examples that
start a manager also run on a keyless cluster (``cluster-keyless``): there the
manager's random key travels with each remote Process (loopback only), and in
both the manager listens on tcp:// where the nodes reach it, not ipc://.
"""

from __future__ import annotations

import functools
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.daemons import ROOT, Daemons, base_env

EXAMPLES_DIR = ROOT / "docs" / "examples"
RUNNER = EXAMPLES_DIR / "run.py"
EXAMPLES = sorted(p.name for p in EXAMPLES_DIR.glob("*.py") if p.name not in ("run.py", "quickstart.py"))
# Examples whose remote children use a manager the program starts itself.
OWN_MANAGER_EXAMPLES = ["custom_manager.py"]
RUN_TIMEOUT_S = 150

pytestmark = pytest.mark.timeout(RUN_TIMEOUT_S * 2 + 60)


def run_example(impl: str, script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUNNER), impl, script],
        cwd=EXAMPLES_DIR, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )


def checked(proc: subprocess.CompletedProcess[str], what: str) -> str:
    assert proc.returncode == 0, f"{what} exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc.stdout


@functools.cache
def stdlib_output(script: str) -> str:
    """What the standard library prints (the oracle), once per script and test process."""
    return checked(run_example("stdlib", script, base_env()), f"{script} under the standard library")


@pytest.fixture(scope="module")
def example_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemons]:
    """A manager and two nodes of two workers on loopback, with a key the example's own managers share."""
    cluster = Daemons(tmp_path_factory.mktemp("examples-cluster"), authkey=secrets.token_hex(16).encode())
    cluster.start(nodes=2, processes=2)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def keyless_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemons]:
    """The same cluster without an authkey (allowed on loopback only)."""
    cluster = Daemons(tmp_path_factory.mktemp("examples-keyless"))
    cluster.start(nodes=2, processes=2)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_every_example_is_an_ordinary_multiprocessing_program() -> None:
    assert len(EXAMPLES) >= 6, EXAMPLES
    for name in EXAMPLES:
        text = (EXAMPLES_DIR / name).read_text()
        assert "\nimport multiprocessing\n" in text, name
        assert "dmp" not in text, f"{name} names dmp: the runner, not the script, chooses the library"
        assert 'if __name__ == "__main__":' in text, name


@pytest.mark.parametrize("mode", ["stdlib", "dmp", "cluster"])
@pytest.mark.parametrize("script", EXAMPLES)
def test_example_prints_what_multiprocessing_prints(script: str, mode: str, request: pytest.FixtureRequest) -> None:
    expected = stdlib_output(script)
    assert expected.strip(), f"{script} printed nothing under the standard library"
    if mode == "stdlib":
        # Run twice: an example whose output is not deterministic fails here, not as a dmp difference.
        again = checked(run_example("stdlib", script, base_env()), f"{script} under the standard library")
        assert again == expected
        return
    env = base_env()
    if mode == "cluster":
        cluster: Daemons = request.getfixturevalue("example_cluster")
        env = {**cluster.env, "DMP_ADDRESS": cluster.address}
    got = checked(run_example("dmp", script, env), f"{script} under dmp ({mode})")
    assert got == expected, f"{script} under dmp ({mode}) printed differently"


@pytest.mark.parametrize("script", OWN_MANAGER_EXAMPLES)
def test_own_manager_example_on_a_keyless_cluster(script: str, keyless_cluster: Daemons) -> None:
    assert "BaseManager" in (EXAMPLES_DIR / script).read_text()
    env = {**keyless_cluster.env, "DMP_ADDRESS": keyless_cluster.address}
    got = checked(run_example("dmp", script, env), f"{script} under dmp (keyless cluster)")
    assert got == stdlib_output(script), f"{script} on a keyless cluster printed differently"
