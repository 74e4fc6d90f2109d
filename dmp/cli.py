"""The ``dmp`` command line: manager, worker, status and token. Only this configures logging.

Exit statuses: 0 done, 1 a runtime failure (no manager answered), 2 a usage
error or an unusable address (argparse's own code), 3 the manager refused our key.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from dmp import __version__ as VERSION
from dmp import _config, discovery
from dmp.client.cluster import fetch_status
from dmp.deaths import parse_size
from dmp.errors import AuthenticationError
from dmp.wire import transport
from dmp.wire.address import is_loopback, normalize_address

__all__ = ["fetch_status", "main"]

DEFAULT_BIND = "tcp://127.0.0.1:5555"
EXIT_USAGE = 2
EXIT_REFUSED = 3


class UsageError(ValueError):
    """Bad arguments or an unusable address: exit status 2, one line."""


def read_authkey(path: str | None) -> bytes | None:
    """The key in ``path`` (whitespace stripped), else DMP_AUTHKEY's; None for neither.

    Raises:
        SystemExit: the file cannot be read or is empty (the daemons' message and status).
    """
    if path:
        try:
            with open(path, "rb") as fh:
                key = fh.read().strip()
        except OSError as exc:
            raise SystemExit(f"dmp: cannot read authkey file {path}: {exc.strerror}") from None
        if not key:
            raise SystemExit(f"dmp: authkey file {path} is empty")
        return key
    return _config.authkey_from(None)


def _logging(args: argparse.Namespace) -> None:
    level = _config.log_level(args.log_level)
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


@dataclass
class _Target:
    address: str
    key: bytes | None


def _target(args: argparse.Namespace) -> _Target:
    """Where ``dmp worker``/``dmp status`` go: ADDRESS or TOKEN, else --manager-file,
    else DMP_TOKEN, else DMP_ADDRESS. Also sets up CURVE (a token's or file's key is pinned).

    Raises:
        UsageError: none given, or a bad address, token or manager file.
    """
    given = args.address or None
    token = None
    pinned: bytes | None = None
    if given is None and args.manager_file:
        info = discovery.read_manager_file(args.manager_file)
        given = info["address"]
        curve = info.get("curve_public")
        pinned = curve.encode() if isinstance(curve, str) and not args.curve else None
    if given is None:
        given = _config.env_token() or _config.env_address()
    if given is None:
        raise UsageError(f"no manager address: give ADDRESS or a join token, --manager-file, "
                         f"{_config.ENV_TOKEN} or {_config.ENV_ADDRESS}")
    if discovery.looks_like_token(given):
        token = discovery.parse_token(given)
        address = token.address
        pinned = token.curve_public
    else:
        address = normalize_address(given)
    key = read_authkey(args.authkey_file) if args.authkey_file or token is None else token.authkey
    if pinned is not None:
        transport.pin_curve_key(pinned)
    else:
        transport.use_curve(args.curve)
    return _Target(address, key)


def cmd_manager(args: argparse.Namespace) -> int:
    from dmp_server.daemon import Daemon

    bind = normalize_address(args.bind)
    key = read_authkey(args.authkey_file)
    if key is None and not is_loopback(bind):
        print(
            f"dmp manager: refusing to bind {bind} without an authkey: anyone who can reach it "
            "could run code on your workers. Give one with --authkey-file FILE or DMP_AUTHKEY, "
            "or bind to 127.0.0.1.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not 0 < args.heartbeat_s < float("inf"):
        raise UsageError(f"--heartbeat-s must be a positive number of seconds, not {args.heartbeat_s!r}")
    dash_host, dash_port = _dashboard_address(args.dashboard) if args.dashboard else ("", 0)
    if args.dashboard and key is None and not is_loopback(f"tcp://{dash_host}:{dash_port}"):
        raise UsageError(f"refusing to serve the dashboard on {args.dashboard} without an authkey: give one "
                         "with --authkey-file FILE or DMP_AUTHKEY, or bind it to 127.0.0.1")
    _logging(args)
    transport.use_curve(args.curve, server=True)
    log = logging.getLogger("dmp.manager")
    if transport.curve_enabled():
        log.info("CURVE encryption on (keys in %s)", args.curve or "DMP_CURVE")
    try:
        daemon = Daemon(
            bind=[bind], key=key, max_message=int(args.max_message_mb * 1024 * 1024), max_clients=args.max_clients,
            max_queued=args.max_queued, heartbeat_s=args.heartbeat_s,
        )
    except transport.ZMQError as exc:
        raise UsageError(f"cannot listen on {bind}: {exc.strerror}") from None
    dashboard = None
    if args.dashboard:
        from dmp_server.dashboard import Board, Dashboard, metrics_token

        public = not is_loopback(f"tcp://{dash_host}:{dash_port}")
        try:
            dashboard = Dashboard(dash_host, dash_port, Board(), key, public=public)
        except OSError as exc:
            daemon.close()
            raise UsageError(f"cannot serve the dashboard on {args.dashboard}: {exc.strerror or exc}") from None
        daemon.board = dashboard.board
        log.info("dashboard on %s", dashboard.url)
        if public and key is not None:
            log.info("dashboard: the page asks for the authkey; Prometheus reads /metrics with "
                     "bearer token %s", metrics_token(key))
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    address = discovery.advertised(daemon.endpoints[0])
    log.info("manager listening on %s", ", ".join(daemon.endpoints))
    curve = transport.curve_public_key()
    if key is not None:
        log.info("join token: %s", discovery.make_token(address, key, curve))
    if args.manager_file:
        info = {"address": address, "pid": os.getpid(), "version": VERSION,
                "curve_public": curve.decode() if curve else None,
                "dashboard": dashboard.url if dashboard else None}
        try:
            discovery.write_manager_file(args.manager_file, info)
        except OSError as exc:
            daemon.stop()
            daemon.run()
            raise UsageError(f"cannot write manager file {args.manager_file}: {exc.strerror}") from None
    try:
        daemon.run()
    finally:
        if dashboard is not None:
            dashboard.close()
        if args.manager_file:
            discovery.remove_manager_file(args.manager_file, os.getpid())
    log.info("manager stopped")
    return 0


def _dashboard_address(text: str) -> tuple[str, int]:
    """``--dashboard HOST:PORT`` (``[::1]:PORT`` for IPv6; port 0: any free port)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"--dashboard takes HOST:PORT (e.g. 127.0.0.1:8787), not {text!r}")
    return host, int(port)


def _processes(text: str) -> int:
    """``--processes``: a positive count or ``auto`` (the CPU count)."""
    if text == "auto":
        return _config.cpu_count()
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or 'auto', not {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _resources(text: str) -> dict[str, float]:
    try:
        return _config.parse_resources(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    """``--worker-memory-limit``: 2GiB, 500MB, 1048576 (dmp.deaths.parse_size)."""
    try:
        return parse_size(text, "the worker memory limit")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_worker(args: argparse.Namespace) -> int:
    from dmp.node.daemon import run_node

    processes = args.processes or _config.cpu_count()
    target = _target(args)
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    _logging(args)
    try:
        return run_node(target.address, processes=processes, name=name, key=target.key, resources=args.resources,
                        memory_limit=args.worker_memory_limit or 0)
    except transport.ZMQError as exc:
        raise UsageError(f"cannot connect to {target.address}: {exc.strerror}") from None


def format_status(status: dict[str, Any]) -> str:
    """The ``dmp status`` table."""
    m = status["manager"]
    lines = [
        f"manager {m['address']}  version {m['version']}  up {m['uptime_s']:.0f} s",
        f"slots {status['slots']}  busy {status['busy']}  queued {status['queued']}",
    ]
    for n in status["nodes"]:
        lines.append(f"  node {n['name']:<24} host {n['host']:<16} slots {n['slots']:>3} busy {n['busy']:>3} "
                     f"done {n['tasks_done']:>8} heartbeat {n['last_heartbeat_s']:.1f} s ago"
                     f"{'  ' + n['version'] if n.get('version') else ''}")
    for c in status["clients"]:
        lines.append(f"  client {c.get('name') or c['id']:<20} host {c['host']:<16} queued {c['queued']:>6} "
                     f"running {c['running']:>4} done {c.get('done', 0):>8} failed {c.get('failed', 0):>5}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    target = _target(args)
    if args.watch is not None:
        return _watch(target, args)
    status = fetch_status(target.address, target.key, args.timeout)
    if status is None:
        print(f"dmp status: no dmp manager answered at {target.address} within {args.timeout:g} s", file=sys.stderr)
        return 1
    print(json.dumps(status) if args.json else format_status(status))
    return 0


def _watch(target: _Target, args: argparse.Namespace) -> int:
    """Redraw the table every ``--watch`` seconds until Ctrl-C (in place on a terminal)."""
    if args.watch <= 0:
        raise UsageError("--watch must be a positive number of seconds")
    tty = sys.stdout.isatty()
    try:
        while True:
            status = fetch_status(target.address, target.key, min(args.timeout, args.watch * 5))
            text = format_status(status) if status is not None else f"no dmp manager answers at {target.address}"
            stamp = time.strftime("%H:%M:%S")
            # Home the cursor and clear the screen: the table redraws in place.
            sys.stdout.write(("\x1b[H\x1b[2J" if tty else "\n") + f"every {args.watch:g} s  {stamp}\n{text}\n")
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def cmd_token(args: argparse.Namespace) -> int:
    given = args.address or _config.env_address()
    if not given:
        raise UsageError(f"no manager address: give ADDRESS or set {_config.ENV_ADDRESS}")
    key = read_authkey(args.authkey_file)
    if key is None:
        raise UsageError(f"a join token needs the authkey: --authkey-file FILE or {_config.ENV_AUTHKEY}")
    transport.use_curve(args.curve)
    print(discovery.make_token(normalize_address(given), key, transport.curve_public_key()))
    return 0


_CURVE_HELP = ("encrypt with ZeroMQ CURVE using the key files in DIR (else DMP_CURVE); the manager creates "
               "server.key/server.key_secret there if missing, workers and clients need server.key")


def build_parser() -> argparse.ArgumentParser:
    return _build()[0]


def _build() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="dmp", description="multiprocessing that reaches past one machine")
    parser.add_argument("--version", action="version", version=f"dmp {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("manager", help="run the manager daemon in the foreground")
    p.add_argument("--bind", default=DEFAULT_BIND, help=f"ZeroMQ endpoint to bind (default {DEFAULT_BIND})")
    p.add_argument("--dashboard", metavar="HOST:PORT", default=None,
                   help="serve a live status page, /api/status, /metrics (Prometheus) and /health over HTTP; "
                   "beyond loopback it needs the authkey")
    p.add_argument("--manager-file", metavar="F",
                   help="once listening, write F (JSON: address, pid, version), removed on a clean exit")
    p.add_argument("--max-message-mb", type=float, default=_config.MAX_MESSAGE_BYTES / 2**20,
                   help="largest message accepted, in MiB (default %(default)g)")
    p.add_argument("--max-clients", type=int, default=_config.MAX_CLIENTS,
                   help="most clients connected at once (default %(default)d)")
    p.add_argument("--max-queued", type=int, default=_config.MAX_QUEUED_PER_CLIENT,
                   help="most tasks one client may have queued in the manager (default %(default)d)")
    p.add_argument("--heartbeat-s", type=float, default=_config.HEARTBEAT_S,
                   help=f"heartbeat interval, followed by every peer; a peer silent for {_config.LIVENESS} beats "
                   f"is declared lost, within {_config.LIVENESS + 1} beats (default %(default)g)")
    p.set_defaults(func=cmd_manager)
    p = sub.add_parser("worker", help="run a worker node joined to a manager")
    p.add_argument("address", nargs="?", metavar="ADDRESS or TOKEN",
                   help=f"the manager (tcp://HOST:PORT) or a join token (else --manager-file, "
                        f"{_config.ENV_TOKEN}, {_config.ENV_ADDRESS})")
    p.add_argument("--processes", type=_processes, default=None, metavar="N", help="worker processes, or 'auto' (the CPU count, default)")
    p.add_argument("--name", default=None, help="node name (default: HOST-PID)")
    p.add_argument("--resources", type=_resources, default=None, metavar="NAME=AMOUNT,...",
                   help="what this node has, e.g. GPU=2,MEM=64e9: a Pool(resources={'GPU': 1}) task runs only "
                        "where that much is free, and holds it while it runs")
    p.add_argument("--worker-memory-limit", type=_size, default=None, metavar="SIZE",
                   help="resident memory a worker process may use while it runs a task, e.g. 2GiB or 500MB: "
                        "past it the node kills it and the task's error says so (default: no limit)")
    p.add_argument("--manager-file", metavar="F", help="find the manager through the file `dmp manager --manager-file` wrote")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("status", help="nodes, slots, queued tasks and clients of a manager")
    p.add_argument("address", nargs="?", metavar="ADDRESS", help=f"the manager, tcp://HOST:PORT (else {_config.ENV_ADDRESS})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--watch", nargs="?", type=float, const=1.0, default=None, metavar="SECONDS",
                   help="redraw the table every SECONDS (default 1) until Ctrl-C")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the manager")
    p.add_argument("--manager-file", metavar="F", help="find the manager through this file")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("token", help="print the join token for a manager")
    p.add_argument("address", nargs="?", metavar="ADDRESS", help=f"the manager, tcp://HOST:PORT (else {_config.ENV_ADDRESS})")
    p.set_defaults(func=cmd_token)
    from dmp.launch import ssh

    ssh.add_parser(sub)
    for name in ("manager", "worker", "status", "token"):
        sub.choices[name].add_argument("--authkey-file", help="file holding the shared secret (else DMP_AUTHKEY)")
        sub.choices[name].add_argument("--curve", metavar="DIR", help=_CURVE_HELP)
    for name in ("manager", "worker"):
        sub.choices[name].add_argument("--log-level", choices=_config.LOG_LEVELS, type=str.lower, default=None,
                                       help=f"debug, info (default), warning or error (else {_config.ENV_LOG_LEVEL})")
    return parser, dict(sub.choices)


def manager_flags() -> set[str]:
    """Every option ``dmp manager`` accepts (LocalCluster asks before passing newer ones)."""
    manager = _build()[1]["manager"]
    return {opt for action in manager._actions for opt in action.option_strings}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as exc:  # UsageError, a bad address, token or manager file
        print(f"dmp {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AuthenticationError as exc:
        print(f"dmp {args.command}: {exc}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
