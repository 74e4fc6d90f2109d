"""The worker node daemon (``dmp worker``): keeps N worker processes joined to a manager.

    node --Hello(node)/Heartbeat/WorkerExited--> manager
    node --fork--> worker processes --Hello(worker)/TaskDone--> manager (directly)
    worker sentinel readable -> reap -> WorkerExited(running task) -> respawn

The node never carries task data: workers talk to the manager themselves, so
a node is only liveness and supervision (dmp.wire.peer.PeerLoop: it beats as
the manager's Welcome says, and kills a worker stopped for as long as the
manager would take to drop a silent peer, or busy past ``--worker-memory-limit``).
Its WorkerExited says what it knows of the death (dmp.deaths.WorkerDeath). When the manager goes away the
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

from dmp import _config
from dmp.deaths import format_size
from dmp.errors import AuthenticationError
from dmp.node.supervisor import Supervisor
from dmp.node.worker import WorkerConfig
from dmp.wire import protocol, transport
from dmp.wire.peer import HANDSHAKE_FAILED, SOCKET, PeerLoop, Tick

log = logging.getLogger("dmp.node")

# Exit statuses of ``dmp worker`` (see the CLI): the manager refused our key.
EXIT_REFUSED = 3


class NodeDaemon:
    """The node daemon (`dmp worker`): keeps this node's worker processes joined, reports their exits."""

    def __init__(
        self, address: str, *, processes: int, name: str, key: bytes | None, resources: dict[str, float] | None = None,
        memory_limit: int = 0,
    ) -> None:
        self.address = address
        self.name = name
        self.key = key
        self.resources = dict(resources or {})
        template = WorkerConfig(
            address=address, node=name, key=key, by_value=True, heartbeat=True, forward_output=True
        )
        self.supervisor = Supervisor(template, count=processes, name_prefix=f"dmp-worker-{name}", memory_limit=memory_limit)
        self._stop = False
        self._welcomed_once = False
        self.status = 0

    def request_stop(self, *_: Any) -> None:
        self._stop = True

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (0) or until the manager refuses our key (EXIT_REFUSED)."""
        # Fork the workers before this process has a live ZeroMQ context.
        self.supervisor.start()
        hello = protocol.Hello(
            protocol.Role.NODE, self.name, socket.gethostname(), os.getpid(), resources=self.resources
        )
        peer = PeerLoop(self.address, self.key, hello, on_refused=self._refused)
        peer.watch_handshake()
        peer.say_hello()
        log.info("node %s started %d workers for %s", self.name, self.supervisor.count, self.address)
        watched: set[int] = set()
        welcomed = False
        self.status = 0
        check_at = 0.0  # next kill_overdue
        try:
            while not self._stop:
                watched = self.supervisor.watch(peer.poller, watched)
                ready = peer.poll(max(0.0, check_at - time.monotonic()))
                if HANDSHAKE_FAILED in ready and not welcomed:
                    log.error(
                        "the CURVE handshake with %s failed: that manager does not hold the server key "
                        "we were given (server.key or the join token); not retrying", self.address,
                    )
                    self.status = EXIT_REFUSED
                    break
                if SOCKET in ready:
                    for msg, _frames in peer.messages():
                        if self._stop:
                            break
                        if isinstance(msg, protocol.Welcome):
                            if not welcomed:
                                log.info("joined manager %s", self.address)
                            welcomed = self._welcomed_once = True
                        elif isinstance(msg, protocol.SignalWorker):
                            spared = self.signal_worker(msg)
                            if spared is not None:
                                peer.send(spared)
                        elif isinstance(msg, protocol.Error) and msg.code in (protocol.ErrorCode.AUTH, protocol.ErrorCode.VERSION) and not welcomed:
                            self._refuse_key(msg.text)
                        elif isinstance(msg, protocol.Error) and msg.code != protocol.ErrorCode.UNKNOWN_PEER:
                            log.error("manager refused: %s", msg.text)
                        elif isinstance(msg, protocol.Bye):
                            log.warning("manager said bye (%s); waiting for it to come back", msg.reason)
                            welcomed = peer.joined = False
                for fd in watched.intersection(ready):
                    exited = self.supervisor.reap(fd)
                    if exited is None:
                        continue
                    log.warning("worker pid %d %s", exited.pid, exited.cause)
                    peer.send(protocol.WorkerExited(
                        exited.worker, exited.pid, exited.exitcode, exited.running, int(exited.timed_out),
                        exited.cause.to_wire(),
                    ))
                    if not self._stop:
                        self.supervisor.spawn()
                now = time.monotonic()
                if now >= check_at:
                    # Deadlines are kept here, beside the task, so they hold
                    # even when the client or the manager is unreachable.
                    killed, upcoming = self.supervisor.kill_overdue(now)
                    for pid, key in killed:
                        log.warning("worker pid %d ran task %d past its timeout: killed", pid, key)
                    for pid, key, rss in self.supervisor.kill_over_memory():
                        log.warning("worker pid %d running task %d used %s, over the worker memory limit of %s: "
                                    "killed", pid, key, format_size(rss), format_size(self.supervisor.memory_limit))
                    check_at = now + _config.DEADLINE_CHECK_S
                    if upcoming is not None and upcoming < check_at:
                        check_at = upcoming
                tick = peer.tick()
                if tick is Tick.SILENT:
                    peer.say_hello()  # the manager may have restarted: introduce ourselves again
                if tick is not Tick.NONE:
                    window = peer.live.window
                    for pid in self.supervisor.kill_frozen(time.monotonic(), window):
                        log.warning("worker pid %d was stopped for over %g s: killed, its tasks go elsewhere", pid, window)
        finally:
            # Bye first: the manager requeues what our workers hold on other
            # nodes; then the workers are stopped (their late results are
            # dropped by the manager, never delivered twice).
            log.info("node %s stopping", self.name)
            if self.status == 0:
                peer.send(protocol.Bye("node stopping"))
            self.supervisor.stop(kill=False, timeout=5.0)
            peer.close()
            transport.context().term()  # deliver the Bye (bounded by LINGER_MS)
        return self.status

    def _refuse_key(self, text: object) -> None:
        log.error("the manager at %s refused our authkey: %s", self.address, text)
        self.status = EXIT_REFUSED
        self._stop = True

    def _refused(self, refused: transport.Refused) -> None:
        # Before joining, the manager's answer to a wrong key is an Error we
        # cannot verify. Anything else unverifiable (a rogue peer's junk) is
        # dropped as ever.
        if (not self._welcomed_once and isinstance(refused.error, AuthenticationError)
                and refused.unverified_error()):
            self._refuse_key(refused.error)
            return
        log.error("refused a message from the manager: %s", refused.error)

    def signal_worker(self, msg: protocol.SignalWorker) -> protocol.WorkerSpared | None:
        """Only ever signal our own worker processes, never an arbitrary pid. With
        ``msg.spare`` (a cancel) not while it runs one of them: then the WorkerSpared to answer."""
        if self.supervisor.pid_of(msg.worker) != msg.pid or msg.pid <= 0:
            log.warning("ignoring a signal for unknown worker %s pid %s", msg.worker, msg.pid)
            return None
        if msg.spare:
            running = self.supervisor.kill(msg.worker, msg.spare, msg.signum)
            if running is None:
                return None
            log.info("spared worker pid %d: it runs task %d, given it after the cancelled one", msg.pid, running)
            return protocol.WorkerSpared(msg.worker, msg.pid, running)
        try:
            os.kill(msg.pid, msg.signum)
        except (ProcessLookupError, ValueError, OSError) as exc:
            log.warning("could not signal pid %d: %s", msg.pid, exc)
        return None


def run_node(
    address: str, *, processes: int, name: str, key: bytes | None, resources: dict[str, float] | None = None,
    memory_limit: int = 0,
) -> int:
    """Run a node until SIGTERM/SIGINT; returns its exit status (0, or EXIT_REFUSED).

    ``resources`` (name -> amount) is what the node declares it has;
    ``memory_limit`` the resident bytes a busy worker may use (0: no limit).
    """
    node = NodeDaemon(address, processes=processes, name=name, key=key, resources=resources,
                      memory_limit=memory_limit)
    signal.signal(signal.SIGTERM, node.request_stop)
    signal.signal(signal.SIGINT, node.request_stop)
    return node.run()
