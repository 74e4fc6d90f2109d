"""``dmp ssh`` for real: OpenSSH servers in network-namespace hosts, the launcher in a client namespace.

Each host runs its own ``sshd`` (a throwaway host key and authorized key made
here); the hosts share this machine's file system, so the same venv is the
"installed" dmp on every host. Needs root, iproute2 and OpenSSH (.ci/run
installs openssh-server and openssh-client when missing).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .netns import Topology, make_topology

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

HOSTS = ("h1", "h2", "h3")
PY = sys.executable


@dataclass
class SshWorld:
    topo: Topology
    dir: Path
    keyfile: Path
    sshd: dict[str, subprocess.Popen[Any]]

    @property
    def ssh_options(self) -> list[str]:
        opts = [f"IdentityFile={self.dir / 'id'}", f"UserKnownHostsFile={self.dir / 'known_hosts'}",
                "StrictHostKeyChecking=accept-new", "User=root", "IdentitiesOnly=yes"]
        return [a for opt in opts for a in ("--ssh-option", opt)]

    def launch(self, *args: str) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DMP_")}
        env["PYTHONUNBUFFERED"] = "1"
        return self.topo.spawn(
            "client", [PY, "-m", "dmp", "ssh", *args, *self.ssh_options], env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def daemons(self, host: str) -> list[int]:
        """Processes in ``host``'s namespace other than its sshd listener."""
        return [p for p in self.topo.pids(host) if p != self.sshd[host].pid]


def _wait_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> tuple[str, list[str]]:
    """Read stdout until a line starting with ``prefix``; (that line, every line read so far)."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return seen[-1], seen
    if proc.poll() is None:
        proc.kill()
    err = proc.stderr.read() if proc.stderr else ""
    pytest.fail(f"no {prefix!r} line within {timeout:.0f} s; stdout {seen}; stderr {err}")


@pytest.fixture(scope="module")
def world() -> Iterator[SshWorld]:
    for tool in ("sshd", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            if os.environ.get("CI"):
                pytest.fail(f"{tool} is missing: .ci/run installs openssh-server and openssh-client")
            pytest.skip(f"{tool} is not installed")
    topo = make_topology(("client", *HOSTS, "nosshd"))
    tmp = Path(tempfile.mkdtemp(prefix="dmp-ssh-test-"))
    try:
        tmp.chmod(0o700)
        keygen = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
        for name in ("hostkey", "id"):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)], check=True, timeout=30)
        shutil.copy(tmp / "id.pub", tmp / "authorized_keys")
        keyfile = tmp / "authkey"
        keyfile.write_text(os.urandom(16).hex() + "\n")
        keyfile.chmod(0o600)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
        sshd = {}
        for host in HOSTS:
            config = tmp / f"sshd_{host}.conf"
            config.write_text(textwrap.dedent(f"""\
                ListenAddress {topo.ip(host)}
                HostKey {tmp / 'hostkey'}
                PidFile {tmp / f'sshd_{host}.pid'}
                AuthorizedKeysFile {tmp / 'authorized_keys'}
                PermitRootLogin prohibit-password
                PasswordAuthentication no
                KbdInteractiveAuthentication no
                UsePAM no
                StrictModes no
                """))
            sshd[host] = topo.spawn(host, [sshd_bin, "-D", "-e", "-f", str(config)],
                                    stdout=subprocess.DEVNULL, stderr=open(tmp / f"sshd_{host}.log", "wb"))
        w = SshWorld(topo, tmp, keyfile, sshd)
        for host in HOSTS:  # until each sshd answers
            deadline = time.monotonic() + 30
            probe = f"import socket; socket.create_connection(('{topo.ip(host)}', 22), 2).close()"
            while topo.run("client", [PY, "-c", probe], timeout=10).returncode != 0:
                assert time.monotonic() < deadline, (tmp / f"sshd_{host}.log").read_text()
                time.sleep(0.1)
        yield w
    finally:
        topo.close()
        shutil.rmtree(tmp, ignore_errors=True)


def namespace_of(topo: Topology, host: str) -> str:
    return topo.run(host, ["readlink", "/proc/self/ns/net"]).stdout.strip()


MAP_SCRIPT = """\
import os, sys, time
import dmp

def where(x):
    time.sleep(0.1)
    return os.readlink("/proc/self/ns/net")

with dmp.Pool() as pool:
    print(sorted(set(pool.map(where, range(30), chunksize=1))))
"""


def stop_and_check_hosts_empty(world: SshWorld, proc: subprocess.Popen[str], sig: int) -> None:
    proc.send_signal(sig)
    proc.wait(60)
    deadline = time.monotonic() + 40
    while any(world.daemons(h) for h in HOSTS) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {h: world.daemons(h) for h in HOSTS} == {h: [] for h in HOSTS}


def test_dmp_ssh_runs_a_pool_map_on_every_host_and_ctrl_c_stops_everything(world: SshWorld) -> None:
    ips = [world.topo.ip(h) for h in HOSTS]
    proc = world.launch(*ips, "--processes", "1", "--remote-python", PY, "--authkey-file", str(world.keyfile))
    try:
        manager_line, _ = _wait_line(proc, "manager: ", 60)
        assert manager_line == f"manager: tcp://{ips[0]}:5555"
        ready, _ = _wait_line(proc, "ready: ", 120)
        assert ready == "ready: 3 slots"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DMP_")}
        env |= {"DMP_ADDRESS": f"tcp://{ips[0]}:5555", "DMP_AUTHKEY": world.keyfile.read_text().strip()}
        done = world.topo.run("client", [PY, "-c", MAP_SCRIPT], env, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(sorted(namespace_of(world.topo, h) for h in HOSTS))
        # The secret never appears on a command line, here or on the hosts.
        secret = world.keyfile.read_text().strip().encode()
        for host in HOSTS:
            for pid in world.daemons(host):
                try:
                    assert secret not in Path(f"/proc/{pid}/cmdline").read_bytes()
                except FileNotFoundError:
                    pass
    finally:
        stop_and_check_hosts_empty(world, proc, signal.SIGINT)
    assert proc.returncode == 0


def test_a_launcher_killed_with_sigkill_leaves_nothing_running(world: SshWorld) -> None:
    proc = world.launch(*(world.topo.ip(h) for h in HOSTS[:2]), "--processes", "1", "--remote-python", PY)
    try:
        _wait_line(proc, "ready: ", 120)
        assert all(world.daemons(h) for h in HOSTS[:2])
    finally:
        stop_and_check_hosts_empty(world, proc, signal.SIGKILL)


def bare_python(tmp: Path) -> Path:
    """A Python without dmp: a fresh venv (no site packages) made once per module."""
    python = tmp / "bare" / "bin" / "python"
    if not python.exists():
        subprocess.run([PY, "-m", "venv", "--without-pip", str(tmp / "bare")], check=True, timeout=120)
    return python


@pytest.mark.parametrize("case", ["unreachable", "no-python", "no-dmp", "other-version"])
def test_a_bad_host_is_named_in_one_clear_line(world: SshWorld, case: str) -> None:
    good = world.topo.ip("h1")
    fake = world.dir / "fake-python"
    fake.write_text("#!/bin/sh\necho dmp-probe ok 0.0.1 3.11 2\n")
    fake.chmod(0o755)
    bad, python = {
        "unreachable": (world.topo.ip("nosshd"), PY),
        "no-python": (good, "/nonexistent/python3"),
        "no-dmp": (good, str(bare_python(world.dir))),
        "other-version": (good, str(fake)),
    }[case]
    expected = {
        "unreachable": f"dmp ssh: {bad}: cannot reach it over ssh",
        "no-python": f"dmp ssh: {bad}: no /nonexistent/python3 there",
        "no-dmp": f"dmp ssh: {bad}: dmp is not installed for {python}",
        "other-version": f"dmp ssh: {bad}: dmp 0.0.1 on Python 3.11, but this launcher runs dmp",
    }[case]
    proc = world.launch(bad, "--remote-python", python, "--timeout", "30")
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), err
    assert world.daemons("h1") == []
