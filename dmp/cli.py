"""The ``dmp`` command line: manager, worker and status. Only this configures logging."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from dmp import _config
from dmp.wire import transport
from dmp.wire.address import is_loopback, normalize_address

DEFAULT_BIND = "tcp://127.0.0.1:5555"


def _authkey(path: str | None) -> bytes | None:
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


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def cmd_manager(args: argparse.Namespace) -> int:
    from dmp_server.manager import Manager

    bind = normalize_address(args.bind)
    key = _authkey(args.authkey_file)
    if key is None and not is_loopback(bind):
        print(
            f"dmp manager: refusing to bind {bind} without an authkey: anyone who can reach it "
            "could run code on your workers. Give one with --authkey-file FILE or DMP_AUTHKEY, "
            "or bind to 127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    if args.heartbeat_s <= 0:
        print("dmp manager: --heartbeat-s must be positive", file=sys.stderr)
        return 2
    transport.use_curve(args.curve, server=True)
    _logging()
    if transport.curve_enabled():
        logging.getLogger("dmp.manager").info("CURVE encryption on (keys in %s)", args.curve or "DMP_CURVE")
    manager = Manager(
        bind=[bind], key=key, max_message=int(args.max_message_mb * 1024 * 1024), max_clients=args.max_clients,
        max_queued=args.max_queued, heartbeat_s=args.heartbeat_s,
    )
    signal.signal(signal.SIGTERM, lambda *_: manager.stop())
    signal.signal(signal.SIGINT, lambda *_: manager.stop())
    logging.getLogger("dmp.manager").info("manager listening on %s", ", ".join(manager.endpoints))
    manager.run()
    logging.getLogger("dmp.manager").info("manager stopped")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from dmp.node.daemon import run_node

    address = normalize_address(args.address)
    processes = args.processes or _config.cpu_count()
    if processes < 1:
        print("dmp worker: --processes must be at least 1", file=sys.stderr)
        return 2
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    key = _authkey(args.authkey_file)
    transport.use_curve(args.curve)
    _logging()
    return run_node(address, processes=processes, name=name, key=key)


def cmd_status(args: argparse.Namespace) -> int:
    transport.use_curve(args.curve)
    status = fetch_status(normalize_address(args.address), _authkey(args.authkey_file), args.timeout)
    if status is None:
        print(f"dmp status: no dmp manager answered at {args.address} within {args.timeout:g} s", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status))
        return 0
    m = status["manager"]
    print(f"manager {m['address']}  version {m['version']}  up {m['uptime_s']:.0f} s")
    print(f"slots {status['slots']}  busy {status['busy']}  queued {status['queued']}")
    for n in status["nodes"]:
        print(f"  node {n['name']:<24} host {n['host']:<16} slots {n['slots']:>3} busy {n['busy']:>3} "
              f"done {n['tasks_done']:>8} heartbeat {n['last_heartbeat_s']:.1f} s ago")
    for c in status["clients"]:
        print(f"  client {c['id']:<20} host {c['host']:<16} queued {c['queued']:>6} running {c['running']:>4}")
    return 0


def fetch_status(address: str, key: bytes | None, timeout: float) -> dict[str, Any] | None:
    import zmq

    from dmp.wire import protocol

    sock = transport.make_socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    chan = transport.Channel(sock, key)
    try:
        sock.connect(address)
        chan.send(protocol.Hello(protocol.Role.STATUS, "status", socket.gethostname(), os.getpid()))
        chan.send(protocol.StatusRequest())
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(int(left * 1000) + 1):
                break
            try:
                _, msg, _ = chan.recv()
            except transport.Refused as refused:
                raise SystemExit(f"dmp status: the manager at {address} refused us: {refused.error}") from None
            if isinstance(msg, protocol.Error):
                raise SystemExit(f"dmp status: the manager at {address} refused us: {msg.text}")
            if isinstance(msg, protocol.StatusReply):
                chan.send(protocol.Bye("status done"))
                return msg.status
        return None
    finally:
        chan.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dmp", description="multiprocessing that reaches past one machine")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("manager", help="run the manager daemon in the foreground")
    p.add_argument("--bind", default=DEFAULT_BIND, help=f"ZeroMQ endpoint to bind (default {DEFAULT_BIND})")
    p.add_argument("--authkey-file", help="file holding the shared secret (else DMP_AUTHKEY)")
    p.add_argument("--max-message-mb", type=float, default=_config.MAX_MESSAGE_BYTES / 2**20,
                   help="largest message accepted, in MiB (default %(default)g)")
    p.add_argument("--max-clients", type=int, default=_config.MAX_CLIENTS,
                   help="most clients connected at once (default %(default)d)")
    p.add_argument("--max-queued", type=int, default=_config.MAX_QUEUED_PER_CLIENT,
                   help="most tasks one client may have queued in the manager (default %(default)d)")
    p.add_argument("--heartbeat-s", type=float, default=1.0,
                   help="heartbeat interval; a peer silent for 4 beats is declared lost, within 5 beats (default %(default)g)")
    p.set_defaults(func=cmd_manager)
    p = sub.add_parser("worker", help="run a worker node joined to a manager")
    p.add_argument("address", help="the manager, tcp://HOST:PORT")
    p.add_argument("--processes", type=int, default=None, help="worker processes (default: CPU count)")
    p.add_argument("--name", default=None, help="node name (default: HOST-PID)")
    p.add_argument("--authkey-file", help="file holding the shared secret (else DMP_AUTHKEY)")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("status", help="nodes, slots, queued tasks and clients of a manager")
    p.add_argument("address", help="the manager, tcp://HOST:PORT")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--authkey-file", help="file holding the shared secret (else DMP_AUTHKEY)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the manager")
    p.set_defaults(func=cmd_status)
    from dmp.launch import ssh

    ssh.add_parser(sub)
    for name in ("manager", "worker", "status"):
        sub.choices[name].add_argument(
            "--curve", metavar="DIR",
            help="encrypt with ZeroMQ CURVE using the key files in DIR (else DMP_CURVE); "
            "the manager creates server.key/server.key_secret there if missing, "
            "workers and clients need server.key",
        )
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as exc:
        print(f"dmp {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
