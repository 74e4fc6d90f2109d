"""``dmp ssh HOST [HOST...]``: a manager on the first host and a worker node on every host, over ssh.

    launcher --ssh HOST PY -c PROBE--> every host at once: reachable? dmp? same versions?
    launcher --ssh HOST1 PY -m dmp.launch.remote manager--> the manager   (key on stdin, then a lifeline)
    launcher --ssh HOSTi PY -m dmp.launch.remote worker--> a node per host
    launcher --status--> the manager until every node has joined: "ready: N slots"
    Ctrl-C / SIGTERM --> close every stdin: each daemon stops as under systemctl stop;
        then the ssh clients are ended (SIGTERM, SIGKILL) if they linger

The system ``ssh`` does the connecting, so ``~/.ssh/config``, agents and jump
hosts work as they do for the user. The secret travels on stdin, never on a
command line. If the launcher dies (even by SIGKILL) its end of every ssh
stdin closes, ssh passes the EOF on, and the daemons stop themselves; if the
network between them dies instead, ssh notices within ServerAlive's 15 s.
"""

from __future__ import annotations

import argparse
import collections
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

# Options every ssh call gets (the user's --ssh-option come after and win):
# never prompt, give up on an unreachable host in 10 s, and notice a dead
# connection in 15 s so that a remote daemon does not outlive its launcher.
SSH_DEFAULTS = ("BatchMode=yes", "ConnectTimeout=10", "ServerAliveInterval=5", "ServerAliveCountMax=3")
# How long the daemons get to stop by themselves once their stdin closes
# (a node hands its tasks back first) before their ssh clients are ended.
STOP_GRACE_S = 20.0
PROBE = (
    "import sys\n"
    "try:\n"
    "    import dmp\n"
    "except ImportError as e:\n"
    "    print('dmp-probe missing', e); sys.exit(0)\n"
    "import os\n"
    "print('dmp-probe ok', dmp.__version__, '%d.%d' % sys.version_info[:2], os.cpu_count() or 1)\n"
)


class LaunchError(Exception):
    """One line that names the host and what is wrong with it."""


@dataclass
class Remote:
    """One daemon started over ssh, with the tail of what it printed."""

    host: str
    role: str
    proc: subprocess.Popen[bytes]
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20))

    def last_words(self) -> str:
        lines = [line for line in self.tail if line.strip() and "dmp-remote: started" not in line]
        return lines[-1].strip() if lines else "no output"


def ssh_argv(host: str, options: Sequence[str], remote: Sequence[str]) -> list[str]:
    argv = ["ssh"]
    for opt in (*SSH_DEFAULTS, *options):
        argv += ["-o", opt]
    # ssh joins the remote words into one shell command line: quote each.
    return [*argv, host, "--", " ".join(shlex.quote(word) for word in remote)]


def probe(host: str, python: str, options: Sequence[str], timeout: float = 30.0) -> tuple[str, str, int]:
    """(dmp version, Python minor, CPU count) of ``host``, or LaunchError naming what is wrong."""
    try:
        done = subprocess.run(ssh_argv(host, options, [python, "-c", PROBE]), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"{host}: no answer over ssh within {timeout:.0f} s") from None
    except FileNotFoundError:
        raise LaunchError("no ssh command on this machine (install OpenSSH's client)") from None
    err = done.stderr.strip().splitlines()
    if done.returncode == 255:
        raise LaunchError(f"{host}: cannot reach it over ssh: {err[-1] if err else 'ssh failed'}")
    words = done.stdout.split()
    if done.returncode == 127 or (not words and any("not found" in line for line in err)):
        raise LaunchError(f"{host}: no {python} there (give the remote interpreter with --remote-python)")
    if words[:2] == ["dmp-probe", "missing"]:
        raise LaunchError(f"{host}: dmp is not installed for {python} ({' '.join(words[2:])})")
    if len(words) != 5 or words[:2] != ["dmp-probe", "ok"] or not words[4].isdigit():
        raise LaunchError(f"{host}: {python} did not run the probe: {(err or ['no output'])[-1]}")
    return words[2], words[3], int(words[4])


def check_hosts(hosts: Sequence[str], python: str, options: Sequence[str]) -> dict[str, int]:
    """Probe every host at once: each host's CPU count, or one LaunchError listing every bad host."""
    import dmp

    mine = (dmp.__version__, f"{sys.version_info[0]}.{sys.version_info[1]}")
    problems: dict[str, str] = {}
    cpus: dict[str, int] = {}

    def one(host: str) -> None:
        try:
            *theirs, cpus[host] = probe(host, python, options)
        except LaunchError as exc:
            problems[host] = str(exc)
            return
        if tuple(theirs) != mine:
            problems[host] = (f"{host}: dmp {theirs[0]} on Python {theirs[1]}, but this launcher runs "
                              f"dmp {mine[0]} on Python {mine[1]}: install the same versions everywhere")

    threads = [threading.Thread(target=one, args=(h,), daemon=True) for h in dict.fromkeys(hosts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if problems:
        raise LaunchError("\n".join(problems[h] for h in hosts if h in problems))
    return cpus


def ssh_hostname(host: str, options: Sequence[str]) -> str:
    """What ``host`` resolves to in the user's ssh configuration (its HostName)."""
    argv = ["ssh", "-G", *[a for opt in options for a in ("-o", opt)], host]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return host.rpartition("@")[2]
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key == "hostname" and value:
            return value.strip()
    return host.rpartition("@")[2]


class Launch:
    """The daemons of one ``dmp ssh`` run; :meth:`stop` ends them all, whatever happened."""

    def __init__(self, args: argparse.Namespace, key: bytes) -> None:
        self.args = args
        self.key = key
        self.remotes: list[Remote] = []
        self.echo = args.log_remote

    def start(self, host: str, role: str, daemon_args: Sequence[str]) -> Remote:
        remote = [self.args.remote_python, "-m", "dmp.launch.remote", role, *daemon_args]
        proc = subprocess.Popen(ssh_argv(host, self.args.ssh_option, remote), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        entry = Remote(host, role, proc)
        self.remotes.append(entry)
        threading.Thread(target=self._relay, args=(entry,), daemon=True, name=f"dmp-ssh-{host}").start()
        assert proc.stdin is not None
        proc.stdin.write(self.key.hex().encode() + b"\n")
        proc.stdin.flush()
        return entry

    def _relay(self, remote: Remote) -> None:
        assert remote.proc.stderr is not None
        for raw in remote.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            remote.tail.append(line)
            if self.echo:
                print(f"[{remote.host} {remote.role}] {line}", file=sys.stderr, flush=True)

    def dead(self) -> list[Remote]:
        return [r for r in self.remotes if r.proc.poll() is not None]

    def stop(self) -> None:
        for r in self.remotes:
            if r.proc.stdin is not None and not r.proc.stdin.closed:
                try:
                    r.proc.stdin.close()  # the lifeline: the remote daemon stops itself
                except OSError:
                    pass
        deadline = time.monotonic() + STOP_GRACE_S
        for r in reversed(self.remotes):  # nodes first, the manager last
            try:
                r.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                r.proc.terminate()
                try:
                    r.proc.wait(5)
                except subprocess.TimeoutExpired:
                    r.proc.kill()
                    r.proc.wait(5)


def run(args: argparse.Namespace) -> int:
    from dmp import cli

    hosts: list[str] = list(dict.fromkeys(args.hosts))
    if args.processes not in (None, "auto") and (not args.processes.isdigit() or int(args.processes) < 1):
        print(f"dmp ssh: --processes takes a whole number of at least 1 or 'auto', not {args.processes!r}",
              file=sys.stderr)
        return 2
    keyfile = None
    key = cli.read_authkey(args.authkey_file)  # else DMP_AUTHKEY
    if key is None:
        key = secrets.token_hex(32).encode()
        fd, keyfile = tempfile.mkstemp(prefix="dmp-ssh-", suffix=".key")
        with os.fdopen(fd, "wb") as fh:  # mkstemp makes it 0600
            fh.write(key + b"\n")
    try:
        cpus = check_hosts(hosts, args.remote_python, args.ssh_option)
    except LaunchError as exc:
        print("\n".join(f"dmp ssh: {line}" for line in str(exc).splitlines()), file=sys.stderr)
        _remove(keyfile)
        return 1
    manager_host = args.manager_host or ssh_hostname(hosts[0], args.ssh_option)
    address = f"tcp://{manager_host}:{args.port}"
    launch = Launch(args, key)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        slots = {h: cpus[h] if args.processes in (None, "auto") else int(args.processes) for h in hosts}
        return _serve(launch, slots, address, keyfile, stopping, args)
    finally:
        launch.stop()
        _remove(keyfile)


def _serve(launch: Launch, slots: dict[str, int], address: str, keyfile: str | None,
           stopping: threading.Event, args: argparse.Namespace) -> int:
    from dmp.client.cluster import fetch_status

    hosts = list(slots)
    manager = launch.start(hosts[0], "manager", ["--bind", f"tcp://0.0.0.0:{args.port}"])
    node_args = [] if args.processes in (None, "auto") else ["--processes", args.processes]
    for host in hosts:
        launch.start(host, "worker", [address, "--name", host, *node_args])
    print(f"manager: {address}", flush=True)
    if keyfile:
        print(f"authkey file: {keyfile} (removed when dmp ssh stops)", flush=True)
    deadline = time.monotonic() + args.timeout
    ready = False
    while not stopping.is_set():
        for r in launch.dead():
            if r is manager or not ready:
                print(f"dmp ssh: {r.host}: the {r.role} exited ({r.proc.returncode}): {r.last_words()}",
                      file=sys.stderr, flush=True)
                return 1
        if not ready:
            status = fetch_status(address, launch.key, 2.0)
            joined = {n["name"]: n["slots"] for n in status["nodes"]} if status else {}
            if status and all(joined.get(h, 0) >= n for h, n in slots.items()):
                print(f"ready: {status['slots']} slots", flush=True)
                ready = True
            elif time.monotonic() > deadline:
                missing = ", ".join(f"{h} ({joined.get(h, 0)} of {n} slots)" for h, n in slots.items()
                                    if joined.get(h, 0) < n) if status else "the manager"
                print(f"dmp ssh: not joined after {args.timeout:g} s: {missing}", file=sys.stderr, flush=True)
                return 1
        stopping.wait(0.5 if ready else 0.2)
    return 0


def _remove(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ssh", help="start a manager and worker nodes on hosts over ssh, in the foreground")
    p.add_argument("hosts", nargs="+", metavar="HOST", help="ssh destinations; the first also runs the manager")
    p.add_argument("--processes", default=None, metavar="N",
                   help="worker processes per node, or 'auto' for each host's CPU count (default)")
    p.add_argument("--remote-python", default="python3", metavar="PATH",
                   help="the Python with dmp installed on the hosts (default %(default)s)")
    p.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                   help="passed to ssh as -o OPT (repeatable), e.g. --ssh-option IdentityFile=~/.ssh/id_dmp")
    p.add_argument("--authkey-file", help="file holding the shared secret (else DMP_AUTHKEY, else a new one)")
    p.add_argument("--port", type=int, default=5555, help="the manager's port (default %(default)d)")
    p.add_argument("--manager-host", default=None,
                   help="address nodes and this launcher use to reach the manager "
                   "(default: the first host's HostName in your ssh configuration)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for every node to join (default %(default)g)")
    p.add_argument("--log-remote", action="store_true", help="copy the daemons' logs to stderr, prefixed by host")
    p.set_defaults(func=run)
