"""The worker node daemon (``dmp worker``): keeps N worker processes joined to a manager.

    node --Hello(node)/Heartbeat/WorkerExited--> manager
    node --fork--> worker processes --Hello(worker)/Results--> manager (directly)
    worker sentinel readable -> reap -> WorkerExited(running task) -> respawn

The node never carries task data: workers talk to the manager themselves, so
a node is only liveness and supervision. When the manager goes away the
sockets reconnect by themselves and node and workers say Hello again.
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
from dmp.node.worker import EXIT_REFUSED, HELLO_BACKOFF_MAX_S, HELLO_BACKOFF_S, WorkerConfig
from dmp.wire import protocol, transport

log = logging.getLogger("dmp.node")

HEARTBEAT_S = 1.0
LIVENESS = 5


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
        self.exit_code = 0

    def request_stop(self, *_: Any) -> None:
        self._stop = True

    def run(self) -> None:
        # Fork the workers before this process has a live ZeroMQ context.
        self.supervisor.start()
        sock = transport.make_socket(zmq.DEALER)
        chan = transport.Channel(sock, self.key)
        sock.connect(self.address)
        hello = protocol.Hello(protocol.Role.NODE, self.name, socket.gethostname(), os.getpid(), self.supervisor.count)
        chan.send(hello)
        log.info("node %s started %d workers for %s", self.name, self.supervisor.count, self.address)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
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
                if sock in ready:
                    while int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                        try:
                            _, msg, _frames = chan.recv(zmq.NOBLOCK)
                        except transport.Refused as refused:
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
                        elif isinstance(msg, protocol.Error) and msg.code in (
                            protocol.ErrorCode.AUTH, protocol.ErrorCode.VERSION,
                        ):
                            log.error("the manager refused this node: %s", msg.text)
                            self.exit_code = EXIT_REFUSED
                            self._stop = True
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
            chan.send(protocol.Bye("node stopping"))
            self.supervisor.stop(kill=False, timeout=5.0)
            chan.close()
            transport.context().term()  # deliver the Bye (bounded by LINGER_MS)


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
    """Serve until stopped; the exit status (3: the manager refused our key or version)."""
    node = Node(address, processes=processes, name=name, key=key)
    signal.signal(signal.SIGTERM, node.request_stop)
    signal.signal(signal.SIGINT, node.request_stop)
    node.run()
    return node.exit_code
