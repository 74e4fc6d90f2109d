"""``python -m tests.bench.floor``: the transport floor under the benchmark rows.

What one round trip costs on this machine before any dmp code runs:

    pipe          multiprocessing.Pipe echo with a forked child (the stdlib's path)
    unix socket   socketpair echo (what SyncManager's connections use)
    zmq ipc/tcp   pyzmq DEALER -> ROUTER echo in a forked child (dmp's transport)
    zmq relay     DEALER -> ROUTER relay -> DEALER worker and back (the shape of
                  a cluster apply: client, manager, worker)

and what large payloads can move (16 MiB messages, sent with copy=False):

    one-way       DEALER -> ROUTER in a forked child, MB/s received
    relay         8 messages out through a relay to a worker that echoes them
                  and back, bytes out + back per second (the shape of the
                  numpy_payload row in cluster mode)

A dmp row cannot beat its floor: a managed dict call is at least one zmq round
trip (plus the object host hop), a cluster apply at least one relay, a
cluster payload at most the relay's MB/s. Prints medians in µs and MB/s;
nothing is asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import zmq

PAYLOAD = b"x" * 64


def _forked(serve: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            serve()
        finally:
            os._exit(0)
    return pid


def _median_us(n: int, once: Callable[[], Any]) -> float:
    for _ in range(min(200, n)):
        once()
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        once()
        samples.append(clock() - t0)
    return statistics.median(samples) * 1e6


def pipe_rtt(n: int) -> float:
    parent, child = multiprocessing.Pipe()

    def serve() -> None:
        while (msg := child.recv_bytes()) != b"":
            child.send_bytes(msg)

    pid = _forked(serve)
    try:
        return _median_us(n, lambda: (parent.send_bytes(PAYLOAD), parent.recv_bytes()))
    finally:
        parent.send_bytes(b"")
        os.waitpid(pid, 0)


def socketpair_rtt(n: int) -> float:
    a, b = socket.socketpair()

    def serve() -> None:
        a.close()
        while msg := b.recv(4096):
            b.sendall(msg)

    pid = _forked(serve)
    b.close()
    try:
        return _median_us(n, lambda: (a.sendall(PAYLOAD), a.recv(4096)))
    finally:
        a.close()
        os.waitpid(pid, 0)


def zmq_rtt(endpoint: str, n: int) -> float:
    def serve() -> None:
        ctx = zmq.Context()  # the child's own: contexts do not survive fork
        router = ctx.socket(zmq.ROUTER)
        router.bind(endpoint)
        while (parts := router.recv_multipart())[1] != b"":
            router.send_multipart(parts)

    pid = _forked(serve)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(endpoint)  # ZeroMQ retries until the child has bound
    try:
        return _median_us(n, lambda: (dealer.send(PAYLOAD), dealer.recv()))
    finally:
        dealer.send(b"")
        os.waitpid(pid, 0)
        dealer.close(0)
        ctx.term()


def zmq_relay_rtt(endpoint: str, n: int) -> float:
    def relay() -> None:
        ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        router.bind(endpoint)
        client = worker = b""
        while True:
            ident, body = router.recv_multipart()
            if body == b"W":
                worker = ident
            elif body == b"":
                router.send_multipart([worker, b""])
                return
            elif ident == worker:
                router.send_multipart([client, body])
            else:
                client = ident
                router.send_multipart([worker, body])

    def work() -> None:
        ctx = zmq.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(endpoint)
        dealer.send(b"W")
        while (msg := dealer.recv()) != b"":
            dealer.send(msg)

    pids = [_forked(relay)]
    time.sleep(0.2)
    pids.append(_forked(work))
    time.sleep(0.2)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(endpoint)
    try:
        return _median_us(n, lambda: (dealer.send(PAYLOAD), dealer.recv()))
    finally:
        dealer.send(b"")
        for pid in pids:
            os.waitpid(pid, 0)
        dealer.close(0)
        ctx.term()


BIG = 16 * 1024 * 1024


def zmq_oneway_mbs(endpoint: str, count: int) -> float:
    """MB/s of ``count`` 16 MiB messages one way (the receiver acknowledges the last)."""

    def serve() -> None:
        ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        router.bind(endpoint)
        while True:
            ident, body = router.recv_multipart(copy=False)
            if len(body) == 0:
                return
            if len(body) == 1:  # the sender asks: all received?
                router.send_multipart([ident.bytes, b"k"])

    pid = _forked(serve)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(endpoint)
    data = os.urandom(BIG)
    try:
        dealer.send(b"?")
        dealer.recv()  # connected
        best = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(count):
                dealer.send(data, copy=False)
            dealer.send(b"?")
            dealer.recv()
            best = max(best, count * BIG / 1e6 / (time.perf_counter() - t0))
        return best
    finally:
        dealer.send(b"")
        os.waitpid(pid, 0)
        dealer.close(0)
        ctx.term()


def zmq_relay_mbs(endpoint: str, count: int) -> float:
    """Bytes out + back per second of ``count`` 16 MiB messages through a relay to an echoing worker."""

    def relay() -> None:
        ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        router.bind(endpoint)
        client = worker = b""
        while True:
            ident, body = router.recv_multipart(copy=False)
            if body.bytes[:1] == b"W" and len(body) == 1:
                worker = ident.bytes
            elif len(body) == 0:
                router.send_multipart([worker, b""])
                return
            elif ident.bytes == worker:
                router.send_multipart([client, body], copy=False)
            else:
                client = ident.bytes
                router.send_multipart([worker, body], copy=False)

    def work() -> None:
        ctx = zmq.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(endpoint)
        dealer.send(b"W")
        while len(msg := dealer.recv(copy=False)) != 0:
            dealer.send(msg, copy=False)

    pids = [_forked(relay)]
    time.sleep(0.2)
    pids.append(_forked(work))
    time.sleep(0.2)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(endpoint)
    data = os.urandom(BIG)
    try:
        dealer.send(b"xx")
        dealer.recv()  # the worker is there
        best = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(count):
                dealer.send(data, copy=False)
            for _ in range(count):
                dealer.recv(copy=False)
            best = max(best, 2 * count * BIG / 1e6 / (time.perf_counter() - t0))
        return best
    finally:
        dealer.send(b"")
        for pid in pids:
            os.waitpid(pid, 0)
        dealer.close(0)
        ctx.term()


def _free_tcp() -> str:
    from tests.ports import free_port

    return f"tcp://127.0.0.1:{free_port()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=3000, help="round trips per measurement")
    parser.add_argument("--big", type=int, default=8, help="16 MiB messages per payload measurement (best of 3)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            ("pipe (multiprocessing.Pipe)", pipe_rtt(args.n)),
            ("unix socketpair", socketpair_rtt(args.n)),
            ("zmq DEALER/ROUTER ipc", zmq_rtt(f"ipc://{tmp}/echo", args.n)),
            ("zmq DEALER/ROUTER tcp loopback", zmq_rtt(_free_tcp(), args.n)),
            ("zmq relay ipc (client, relay, worker)", zmq_relay_rtt(f"ipc://{tmp}/relay", args.n)),
            ("zmq relay tcp loopback", zmq_relay_rtt(_free_tcp(), args.n)),
        ]
        payload = [
            ("zmq one-way ipc", zmq_oneway_mbs(f"ipc://{tmp}/oneway", args.big)),
            ("zmq one-way tcp loopback", zmq_oneway_mbs(_free_tcp(), args.big)),
            ("zmq relay tcp loopback, out + back", zmq_relay_mbs(_free_tcp(), args.big)),
        ]
    print(f"transport floor: median round trip of a {len(PAYLOAD)}-byte message, {os.cpu_count()} CPUs")
    for name, us in rows:
        print(f"  {name:<40} {us:8.1f} µs")
    print(f"payload floor: {args.big} messages of 16 MiB, copy=False, best of 3")
    for name, mbs in payload:
        print(f"  {name:<40} {mbs:8.0f} MB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
