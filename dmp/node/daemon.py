"""The worker node daemon (``dmp worker``): keeps N worker processes joined to a manager.

    node --Hello(node)/Heartbeat/WorkerExited--> manager
    node --fork--> worker processes --Hello(worker)/Results--> manager (directly)
    worker sentinel readable -> reap -> WorkerExited(running task) -> respawn

The node never carries task data: workers talk to the manager themselves, so
a node is only liveness and supervision. When the manager goes away the
sockets reconnect by themselves and node and workers say Hello again.

Before it first joins, a node that the manager refuses (a wrong authkey, or
a CURVE handshake failing against a manager without the pinned key) stops
with EXIT_REFUSED, so a service manager does not retry it forever.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Any

import zmq

from dmp.node.supervisor import Supervisor
from dmp.node.worker import HELLO_BACKOFF_MAX_S, HELLO_BACKOFF_S, WorkerConfig
from dmp.wire import protocol, transport

log = logging.getLogger("dmp.node")

HEARTBEAT_S = 1.0
LIVENESS = 5
# Exit statuses of ``dmp worker`` (see the CLI): the manager refused our key.
EXIT_REFUSED = 3

_HANDSHAKE_FAILED = int(
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class Node:
    def __init__(self, address: str, *, processes: int, name: str, key: bytes | None) -> None:
        self.address = address
        self.name = name
        self.key = key
        template = WorkerConfig(
            address=address, node=name, key=key, by_value=True, heartbeat=True, forward_output=True
        )
        self.supervisor = Supervisor(template, count=processes, name_prefix="dmp-worker")
        self._stop = False

    def request_stop(self, *_: Any) -> None:
        self._stop = True

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (0) or until the manager refuses our key (EXIT_REFUSED)."""
        # Fork the workers before this process has a live ZeroMQ context.
        self.supervisor.start()
        sock = transport.make_socket(zmq.DEALER)
        chan = transport.Channel(sock, self.key)
        monitor = sock.get_monitor_socket(_HANDSHAKE_FAILED) if transport.curve_enabled() else None
        sock.connect(self.address)
        hello = protocol.Hello(protocol.Role.NODE, self.name, socket.gethostname(), os.getpid(), self.supervisor.count)
        chan.send(hello)
        log.info("node %s started %d workers for %s", self.name, self.supervisor.count, self.address)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        if monitor is not None:
            poller.register(monitor, zmq.POLLIN)
        status = 0
        watched: set[int] = set()
        last_heard = time.monotonic()
        beat = HEARTBEAT_S  # until the manager's Welcome says otherwise
        next_beat = last_heard + beat
        joined = False
        next_hello = 0.0
        backoff = HELLO_BACKOFF_S
        try:
            while not self._stop:
                watched = self.supervisor.watch(poller, watched)
                ready = dict(poller.poll(int(max(0.0, next_beat - time.monotonic()) * 1000) + 1))
                if monitor is not None and monitor in ready:
                    monitor.recv_multipart()
                    if not joined:
                        log.error(
                            "the CURVE handshake with %s failed: that manager does not hold the server key "
                            "we were given (server.key or the join token); not retrying", self.address,
                        )
                        status = EXIT_REFUSED
                        break
                if sock in ready:
                    while int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                        try:
                            _, msg, _frames = chan.recv(zmq.NOBLOCK)
                        except transport.Refused as refused:
                            # Unverifiable (a rogue peer's junk, a stale session's last
                            # words): dropped. The manager's answer to a wrong key is an
                            # unsigned Error the channel lets through (see below).
                            log.error("refused a message from the manager: %s", refused.error)
                            continue
                        last_heard = time.monotonic()
                        if isinstance(msg, protocol.Welcome):
                            backoff = HELLO_BACKOFF_S
                            beat = msg.heartbeat_s if msg.heartbeat_s > 0 else HEARTBEAT_S
                            if not joined:
                                log.info("joined manager %s", self.address)
                            joined = True
                        elif isinstance(msg, protocol.SignalWorker):
                            self.signal_worker(msg)
                        elif isinstance(msg, protocol.Error) and msg.code == protocol.ErrorCode.UNKNOWN_PEER:
                            if time.monotonic() >= next_hello:  # backing off: 1 s, 2 s, ... up to 30 s
                                chan.send(hello)
                                next_hello = time.monotonic() + backoff
                                backoff = min(backoff * 2, HELLO_BACKOFF_MAX_S)
                        elif isinstance(msg, protocol.Error) and not joined and msg.code in (
                            protocol.ErrorCode.AUTH, protocol.ErrorCode.VERSION,
                        ):
                            what = "our authkey" if msg.code == protocol.ErrorCode.AUTH else "this node"
                            log.error("the manager at %s refused %s: %s", self.address, what, msg.text)
                            status = EXIT_REFUSED
                            self._stop = True
                            break
                        elif isinstance(msg, protocol.Error):
                            log.error("manager refused: %s", msg.text)
                        elif isinstance(msg, protocol.Bye):
                            log.warning("manager said bye (%s); waiting for it to come back", msg.reason)
                            joined = False
                for fd in watched.intersection(ready):
                    exited = self.supervisor.reap(fd)
                    if exited is None:
                        continue
                    log.warning("worker pid %d exited (%d)", exited.pid, exited.exitcode)
                    chan.send(protocol.WorkerExited(exited.worker, exited.pid, exited.exitcode, exited.running))
                    if not self._stop:
                        self.supervisor.spawn()
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + beat
                    for pid in self.supervisor.kill_frozen(now, beat * LIVENESS):
                        log.warning("worker pid %d was stopped for over %g s: killed, its tasks go elsewhere", pid, beat * LIVENESS)
                    if now - last_heard > beat * LIVENESS:
                        chan.send(hello)  # the manager may have restarted: introduce ourselves again
                        last_heard = now
                    else:
                        chan.send(protocol.Heartbeat())
        finally:
            # Bye first: the manager requeues what our workers hold on other
            # nodes; then the workers are stopped (their late results are
            # dropped by the manager, never delivered twice).
            log.info("node %s stopping", self.name)
            if status == 0:
                chan.send(protocol.Bye("node stopping"))
            self.supervisor.stop(kill=False, timeout=5.0)
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(0)
            chan.close()
            transport.context().term()  # deliver the Bye (bounded by LINGER_MS)
        return status


    def signal_worker(self, msg: protocol.SignalWorker) -> None:
        """Only ever signal our own worker processes, never an arbitrary pid."""
        if self.supervisor.pid_of(msg.worker) != msg.pid or msg.pid <= 0:
            log.warning("ignoring a signal for unknown worker %s pid %s", msg.worker, msg.pid)
            return
        try:
            os.kill(msg.pid, msg.signum)
        except (ProcessLookupError, ValueError, OSError) as exc:
            log.warning("could not signal pid %d: %s", msg.pid, exc)


def run_node(address: str, *, processes: int, name: str, key: bytes | None) -> int:
    """Run a node until SIGTERM/SIGINT; returns its exit status (0, or EXIT_REFUSED)."""
    node = Node(address, processes=processes, name=name, key=key)
    signal.signal(signal.SIGTERM, node.request_stop)
    signal.signal(signal.SIGINT, node.request_stop)
    return node.run()
