"""Operating real daemons: join tokens, the manager file, exit statuses, log levels and names,
``status --watch``, DMP_ADDRESS, and the Python API (LocalCluster, wait_for_workers, status)."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import dmp
from dmp import discovery
from tests.daemons import unused_address

KEY = "ops-secret"
# Managers bind port 0 and the test reads the bound address back (no check-then-bind race).
ANY_PORT = "tcp://127.0.0.1:0"
LISTENING = r"manager listening on (\S+)"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMP_")}
    env.update(extra)
    return env


def _wait(cond: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Daemons:
    """Daemons started by one test, their stderr in files; all stopped by pid at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.tmp / f"daemon-{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "dmp", *args], env=env or _env(),
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def wait_log(self, proc: subprocess.Popen[bytes], pattern: str) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def seen() -> bool:
            m = re.search(pattern, self.log(proc))
            if m:
                found.append(m)
            return bool(m) or proc.poll() is not None

        _wait(seen, f"{pattern!r} in the log")
        assert found, f"exited ({proc.returncode}) before logging {pattern!r}:\n{self.log(proc)}"
        return found[0]

    def stop(self, proc: subprocess.Popen[bytes]) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(10)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    d = Daemons(tmp_path)
    try:
        yield d
    finally:
        d.stop_all()


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dmp", *args], env=env or _env(), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_version_and_usage_errors_exit_as_documented() -> None:
    out = _run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"dmp {dmp.__version__}"
    for args, says in [(("worker", "h:1", "--processes", "0"), "at least 1"),
                       (("worker", "h:1", "--processes", "many"), "a number or 'auto'")]:
        out = _run(*args)
        assert out.returncode == 2 and says in out.stderr, (args, out.stderr)  # argparse: usage + error
    for args, says in [(("worker",), "no manager address"), (("worker", "dmp1.garbage"), "damaged"), (("status", "nowhere"), "invalid dmp address"),
                       (("token", "h:1"), "needs the authkey")]:
        out = _run(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    out = _run("manager", "--bind", "tcp://127.0.0.1:1", env=_env(DMP_LOG_LEVEL="loud"))
    assert out.returncode == 2 and "DMP_LOG_LEVEL must be one of" in out.stderr


def test_address_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        out = _run("manager", "--bind", f"tcp://127.0.0.1:{busy.getsockname()[1]}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "cannot listen on" in out.stderr and "Address already in use" in out.stderr
    assert "Traceback" not in out.stderr


def test_join_token_manager_file_names_in_logs_and_clean_exit(daemons: Daemons, tmp_path: Path) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text(KEY + "\n")
    mfile = tmp_path / "manager.json"
    manager = daemons.start("manager", "--bind", ANY_PORT, "--authkey-file", str(keyfile), "--manager-file", str(mfile))
    address = daemons.wait_log(manager, LISTENING).group(1)
    token = daemons.wait_log(manager, r"join token: (\S+)").group(1)
    _wait(mfile.exists, "the manager file")
    assert oct(mfile.stat().st_mode & 0o777) == "0o600"
    info = discovery.read_manager_file(str(mfile))
    assert (info["address"], info["pid"], info["version"]) == (address, manager.pid, dmp.__version__)
    printed = _run("token", address, "--authkey-file", str(keyfile))
    assert printed.returncode == 0 and printed.stdout.strip() == token

    by_token = daemons.start("worker", token, "--processes", "1", "--name", "by-token")  # nothing else: no key, no address
    by_file = daemons.start("worker", "--manager-file", str(mfile), "--processes", "1", "--name", "by-file",
                            env=_env(DMP_AUTHKEY=KEY))
    by_env = daemons.start("worker", "--processes", "1", "--name", "by-env", env=_env(DMP_TOKEN=token))
    status = dmp.wait_for_workers(3, 60, address=address, authkey=KEY)
    assert sorted(n["name"] for n in status["nodes"]) == ["by-env", "by-file", "by-token"]
    out = _run("status", "--json", env=_env(DMP_ADDRESS=address, DMP_AUTHKEY=KEY))  # DMP_ADDRESS fallback
    assert out.returncode == 0 and '"slots": 3' in out.stdout

    assert daemons.stop(by_token) == 0
    daemons.wait_log(manager, r"node by-token on 127\.0\.0\.1 left")
    log = daemons.log(manager)
    assert re.search(r"node by-file on 127\.0\.0\.1 joined", log)
    assert not re.search(r"[0-9a-f]{16}", log.replace(token, "")), log  # no raw socket ids
    assert "status status" not in log  # a status probe is DEBUG, not INFO
    for proc in (by_file, by_env):
        assert daemons.stop(proc) == 0
    assert daemons.stop(manager) == 0
    assert not mfile.exists()


def test_refused_keys_exit_3(daemons: Daemons, tmp_path: Path) -> None:
    manager = daemons.start("manager", "--bind", ANY_PORT, env=_env(DMP_AUTHKEY=KEY))
    address = daemons.wait_log(manager, LISTENING).group(1)
    for env in (_env(DMP_AUTHKEY="wrong"), _env()):
        out = _run("worker", address, "--processes", "1", env=env)
        assert out.returncode == 3, out.stderr
        assert "refused our authkey" in out.stderr
    out = _run("status", address, env=_env(DMP_AUTHKEY="wrong"))
    assert out.returncode == 3 and "refused us" in out.stderr


def test_curve_token_pins_the_manager_key(daemons: Daemons, tmp_path: Path) -> None:
    env = _env(DMP_AUTHKEY=KEY)
    first = daemons.start("manager", "--bind", ANY_PORT, "--curve", str(tmp_path / "a"), env=env)
    address = daemons.wait_log(first, LISTENING).group(1)
    token = daemons.wait_log(first, r"join token: (\S+)").group(1)
    assert discovery.parse_token(token).curve_public is not None
    assert oct((tmp_path / "a" / "server.key_secret").stat().st_mode & 0o777) == "0o600"
    worker = daemons.start("worker", token, "--processes", "1", "--name", "pinned")
    daemons.wait_log(worker, "joined manager")
    assert daemons.stop(worker) == 0
    assert daemons.stop(first) == 0
    # Another manager at the same address, same authkey, other CURVE keys: the token's worker refuses it.
    impostor = daemons.start("manager", "--bind", address, "--curve", str(tmp_path / "b"), env=env)
    daemons.wait_log(impostor, "manager listening")
    out = _run("worker", token, "--processes", "1")
    assert out.returncode == 3, out.stderr
    assert "CURVE handshake" in out.stderr


def test_log_levels(daemons: Daemons) -> None:
    mfile = daemons.tmp / "quiet.json"  # the quiet one logs no "listening on": it names its port here
    quiet = daemons.start("manager", "--bind", ANY_PORT, "--log-level", "warning", "--manager-file", str(mfile))
    _wait(mfile.exists, "the quiet manager's file")
    address = discovery.read_manager_file(str(mfile))["address"]
    loud = daemons.start("manager", "--bind", ANY_PORT, env=_env(DMP_LOG_LEVEL="debug"))
    loud_address = daemons.wait_log(loud, LISTENING).group(1)
    assert _run("status", loud_address).returncode == 0
    daemons.wait_log(loud, r"DEBUG dmp\.manager status status on 127\.0\.0\.1 joined")
    assert _run("status", address).returncode == 0  # answers, so it is up
    assert daemons.stop(quiet) == 0
    assert " INFO " not in daemons.log(quiet)


def test_status_watch_redraws_until_ctrl_c() -> None:
    with dmp.LocalCluster(nodes=1, processes=1) as cluster:
        primary, secondary = pty.openpty()
        env = _env(DMP_ADDRESS=cluster.address, DMP_AUTHKEY=cluster.authkey.decode())
        proc = subprocess.Popen([sys.executable, "-m", "dmp", "status", "--watch", "0.2"], env=env,
                                stdin=subprocess.DEVNULL, stdout=secondary, stderr=subprocess.PIPE)
        os.close(secondary)
        try:
            seen = b""
            deadline = time.monotonic() + 30
            while seen.count(b"\x1b[H\x1b[2J") < 2 and time.monotonic() < deadline:
                seen += os.read(primary, 4096)
            frames = seen.split(b"\x1b[H\x1b[2J")[1:]
            assert len(frames) >= 2, seen
            assert b"node local-1" in frames[0] and b"slots 1" in frames[1]
            proc.send_signal(signal.SIGINT)
            # Keep reading, as a terminal would: a full pty would block its last writes and exit.
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                if select.select([primary], [], [], 0.1)[0]:
                    try:
                        os.read(primary, 4096)
                    except OSError:
                        break
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            os.close(primary)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:  # a zombie is gone too
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_local_cluster_runs_a_pool_and_stops_everything() -> None:
    with dmp.LocalCluster(nodes=2, processes=1) as cluster:
        assert cluster.address.startswith("tcp://127.0.0.1:") and cluster.authkey
        pids = cluster.pids
        with dmp.Pool(address=cluster.address, authkey=cluster.authkey) as pool:
            assert pool.map(abs, range(-20, 0)) == list(range(20, 0, -1))
        status = dmp.status(cluster.address, cluster.authkey)
        assert status["slots"] == 2 and {n["name"] for n in status["nodes"]} == {"local-1", "local-2"}
        assert set(status) >= {"manager", "slots", "busy", "queued", "nodes", "clients", "totals"}
        from dmp.wire.protocol import software_version

        assert {n["version"] for n in status["nodes"]} == {software_version()}
        assert status["totals"]["done"] >= 1 and status["totals"]["failed"] == 0
        with pytest.raises(dmp.TimeoutError, match="3 worker slots"):
            dmp.wait_for_workers(3, 0.5, address=cluster.address, authkey=cluster.authkey)
        assert dmp.wait_for_workers(2, 10, address=cluster.address, authkey=cluster.authkey)["slots"] == 2
        children = subprocess.run(["pgrep", "-P", ",".join(map(str, pids))], capture_output=True, text=True).stdout.split()
    assert not [pid for pid in [*pids, *map(int, children)] if _alive(pid)]


def test_status_without_a_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DMP_ADDRESS", raising=False)
    with pytest.raises(ValueError, match="needs a manager"):
        dmp.wait_for_workers(1, 0.1)
    with unused_address() as nowhere, pytest.raises(dmp.TimeoutError, match="no manager answered"):
        dmp.wait_for_workers(1, 0.3, address=nowhere)


def test_local_cluster_left_open_is_stopped_at_interpreter_exit() -> None:
    script = ("import dmp\n"
              "cluster = dmp.LocalCluster(nodes=1, processes=1)\n"
              "print(*cluster.pids, flush=True)\n")  # never stopped by the script itself
    out = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2
    _wait(lambda: not any(_alive(pid) for pid in pids), "the daemons to be gone", timeout=30)
