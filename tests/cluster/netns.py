"""Several "hosts" on one machine, built from Linux network namespaces (needs root).

    switch netns:  br0 --- v0 ... vN          (a bridge; never in the root namespace)
                            |        |
    host netns:           eth0     eth0       10.213.X.1, 10.213.X.2, ... /24, plus lo

Every namespace (and so every link, which lives and dies with its namespaces)
is named ``dmpt<pid>x<counter>-...``, unique per test run and per topology, and
the subnet's third octet is random per topology. Nothing is created in, or
sent through, the root namespace: traffic stays on the private bridge.

:meth:`Topology.close` kills every process it started (SIGTERM, then SIGKILL,
waiting for each), then every process still inside one of its namespaces
(orphans such as a killed node's workers), then deletes the namespaces. It is
idempotent and registered with :mod:`atexit`.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

_counter = itertools.count(1)
_NAME = re.compile(r"^dmpt(\d+)x\d+-")


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no ``ip``, no kernel support)."""


@dataclass(frozen=True)
class Host:
    name: str  # the test's name for it: "mgr", "nodeA", ...
    netns: str  # the namespace
    ip: str  # its address on the bridge
    port: str  # its veth end in the switch namespace (<= 15 chars)


def _ip_binary() -> str:
    path = shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip") if os.path.exists(p)), None
    )
    if path is None:
        raise NetnsUnavailable("the `ip` command (iproute2) is not installed")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Topology:
    """A bridge in its own namespace and one namespace per host, each on the bridge by a veth pair."""

    def __init__(self, hosts: Sequence[str]) -> None:
        if len(set(hosts)) != len(hosts) or not hosts:
            raise ValueError(f"host names must be unique and non-empty: {hosts!r}")
        if len(hosts) > 250:
            raise ValueError("at most 250 hosts")
        self.ip_cmd = _ip_binary()
        self.tag = f"dmpt{os.getpid()}x{next(_counter)}"
        self.octet = random.SystemRandom().randrange(1, 255)
        self.subnet = f"10.213.{self.octet}.0/24"
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {
            name: Host(name, f"{self.tag}-{name}", f"10.213.{self.octet}.{i + 1}", f"v{i}")
            for i, name in enumerate(hosts)
        }
        self.procs: list[subprocess.Popen[Any]] = []
        # What close() had to SIGKILL (did not exit within the SIGTERM grace): a shutdown bug to report.
        self.forced: list[str] = []
        self._namespaces: list[str] = []  # created, in order
        self._closed = False
        atexit.register(self.close)
        _sweep_stale(self.ip_cmd)
        try:
            self._build()
        except BaseException as exc:
            self.close()
            if isinstance(exc, subprocess.CalledProcessError):
                raise NetnsUnavailable(
                    f"`{' '.join(map(str, exc.cmd))}` failed ({exc.returncode}): {(exc.stderr or '').strip()}"
                ) from exc
            if isinstance(exc, OSError):
                raise NetnsUnavailable(f"cannot run ip: {exc}") from exc
            raise

    # --- building ---------------------------------------------------------------------------

    def _ip(self, *args: str, netns: str | None = None) -> None:
        argv = [self.ip_cmd, *(["-n", netns] if netns else []), *args]
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)

    def _add_netns(self, name: str) -> None:
        self._ip("netns", "add", name)
        self._namespaces.append(name)
        self._ip("link", "set", "lo", "up", netns=name)

    def _build(self) -> None:
        self._add_netns(self.switch)
        self._ip("link", "add", "br0", "type", "bridge", netns=self.switch)
        self._ip("link", "set", "br0", "up", netns=self.switch)
        for host in self.hosts.values():
            self._add_netns(host.netns)
            # Both ends are created straight into their namespaces: the root
            # namespace never sees an interface of ours.
            self._ip("link", "add", host.port, "type", "veth", "peer", "name", "eth0",
                     "netns", host.netns, netns=self.switch)
            self._ip("link", "set", host.port, "master", "br0", "up", netns=self.switch)
            self._ip("addr", "add", f"{host.ip}/24", "dev", "eth0", netns=host.netns)
            self._ip("link", "set", "eth0", "up", netns=host.netns)

    # --- using ------------------------------------------------------------------------------

    def ip(self, host: str) -> str:
        return self.hosts[host].ip

    def netns(self, host: str) -> str:
        return self.hosts[host].netns

    def _argv(self, host: str, argv: Sequence[str]) -> list[str]:
        if self._closed:
            raise RuntimeError("topology is closed")
        return [self.ip_cmd, "netns", "exec", self.hosts[host].netns, *map(str, argv)]

    def spawn(self, host: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              **popen: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host``'s namespace (``ip netns exec`` execs, so the pid is argv's)."""
        proc: subprocess.Popen[Any] = subprocess.Popen(
            self._argv(host, argv), env=dict(env) if env is not None else None, **popen
        )
        self.procs.append(proc)
        return proc

    def run(self, host: str, argv: Sequence[str], env: Mapping[str, str] | None = None, *,
            timeout: float = 60.0, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``host``'s namespace to completion, stdout and stderr captured as text.

        On timeout the process is killed and :class:`subprocess.TimeoutExpired` raised (with its output).
        """
        proc = self.spawn(host, argv, env, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from exc
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def link_down(self, host: str) -> None:
        """Cut ``host`` off the network (its port on the switch goes down; no RST, no FIN)."""
        self._ip("link", "set", self.hosts[host].port, "down", netns=self.switch)

    def link_up(self, host: str) -> None:
        self._ip("link", "set", self.hosts[host].port, "up", netns=self.switch)

    def pids(self, host: str) -> list[int]:
        """Every process inside ``host``'s namespace."""
        return _netns_pids(self.ip_cmd, self.hosts[host].netns)

    def kill_host(self, host: str, sig: int = signal.SIGKILL) -> list[int]:
        """Crash ``host``: send ``sig`` to every process inside its namespace; reap our children."""
        pids = self.pids(host)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        for proc in self.procs:
            if proc.pid in pids:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        return pids

    def wait_no_pids(self, host: str, timeout: float) -> list[int]:
        """Wait until ``host``'s namespace holds no process; returns those left at the deadline."""
        deadline = time.monotonic() + timeout
        while (left := self.pids(host)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left

    # --- tearing down -----------------------------------------------------------------------

    def close(self) -> None:
        """Kill what we started, then anything left in our namespaces, then delete them. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        self.forced += _stop_procs(self.procs)
        for ns in reversed(self._namespaces):
            self.forced += _kill_netns_pids(self.ip_cmd, ns)
        errors = []
        for ns in reversed(self._namespaces):
            for attempt in range(20):
                res = subprocess.run([self.ip_cmd, "netns", "del", ns], capture_output=True, text=True)
                if res.returncode == 0 or ns not in _list_netns(self.ip_cmd):
                    break
                if attempt == 19:
                    errors.append(f"{ns}: {res.stderr.strip()}")
                time.sleep(0.1)
        self._namespaces.clear()
        if errors:
            raise RuntimeError(f"could not delete network namespaces: {errors}")

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(pid: int, args: Any = None) -> str:
    if args is None:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                args = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            args = "?"
    text = " ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args)
    return f"pid {pid}: {text[:160]}"


def _stop_procs(procs: Iterable[subprocess.Popen[Any]], grace: float = 5.0) -> list[str]:
    """SIGTERM every live one, wait up to ``grace`` s, SIGKILL the rest; returns those SIGKILLed."""
    procs = list(procs)
    forced = []
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            forced.append(_describe(proc.pid, proc.args))
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
    return forced


def _list_netns(ip_cmd: str) -> list[str]:
    res = subprocess.run([ip_cmd, "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def _netns_pids(ip_cmd: str, ns: str) -> list[int]:
    res = subprocess.run([ip_cmd, "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in res.stdout.split() if p.isdigit() and p != str(os.getpid())]


def _kill_netns_pids(ip_cmd: str, ns: str) -> list[str]:
    """SIGTERM then SIGKILL every process left inside ``ns`` (all of them descend from our spawns).

    Returns the ones that needed SIGKILL.
    """
    pids = _netns_pids(ip_cmd, ns)
    forced: list[str] = []
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        if not pids:
            break
        if sig == signal.SIGKILL:
            forced = [_describe(pid) for pid in pids]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for pid in pids:  # our own zombie children: reap them
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            pids = [p for p in pids if _alive(p)]
            if not pids:
                break
            time.sleep(0.05)
    return forced


def _sweep_stale(ip_cmd: str) -> None:
    """Delete empty namespaces left by an earlier run of this helper whose process is dead."""
    for ns in _list_netns(ip_cmd):
        m = _NAME.match(ns)
        if m and not _alive(int(m.group(1))) and not _netns_pids(ip_cmd, ns):
            subprocess.run([ip_cmd, "netns", "del", ns], capture_output=True)


def make_topology(hosts: Sequence[str]) -> Topology:
    """A :class:`Topology`, or a skip with the reason; under ``CI=true`` a failure instead, never a skip."""
    try:
        return Topology(hosts)
    except NetnsUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"network namespaces are required under CI=true but cannot be made: {exc}",
                        pytrace=False)
        pytest.skip(f"network namespaces unavailable (needs root and iproute2): {exc}")


@contextlib.contextmanager
def topology(hosts: Sequence[str]) -> Iterator[Topology]:
    topo = make_topology(hosts)
    try:
        yield topo
    finally:
        topo.close()
