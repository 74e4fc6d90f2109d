"""The manager daemon: one reactor (one poll(2), dmp_server.waiting), one thread at a time, no locks.

    clients --(ROUTER)--> decode + verify --> Scheduler --> commands --> route
    workers --(ROUTER)-->      "          --> Scheduler -->    "     -->   "
    nodes   --(ROUTER)--> WorkerExited / Heartbeat
    local client (embedded mode) --> handle_local, or inbox deque + eventfd
    local supervisor (embedded mode) --> sentinel fds --> worker deaths

With a key, a peer's Hello is answered but the peer joins only once it has proved the key in
the session that Hello opened (see dmp_server.routing); refused messages are logged and
answered at a bounded rate (dmp_server.gate).

A step (:meth:`step` = :meth:`handle` of :meth:`poll`): poll until the next timer or the
timeout, take one message from the socket (the next poll finds the rest) and all that the
other ready sources hold, run due timers (peer expiry, parked shared-object calls). As
``dmp manager``, :meth:`run`'s thread takes every step. Embedded in a user's process for
local mode, the steps are taken in turns by the threads of dmp.client.turns.Turns; this class
knows nothing of them. Payloads are never unpickled.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import zmq

from dmp import _config
from dmp.deaths import format_size
from dmp.wire import protocol, transport
from dmp.wire.protocol import ErrorCode, Role
from dmp.wire.wakeup import Wakeup
from dmp_server import doorcall, gate, hostproc, objects, status
from dmp_server.door import Door, FastCall
from dmp_server.peers import (
    LIVENESS,
    Departures,
    LocalClient,
    LocalSupervisor,
    Peers,
    describe,
    excused,
)
from dmp_server.routing import Routing, log, worker_peer
from dmp_server.scheduler import Scheduler
from dmp_server.waiting import Poller
from dmp_server.workerpipes import WorkerPipes

if TYPE_CHECKING:  # the dashboard (http.server and all it imports) only for `dmp manager --dashboard`
    from dmp_server.dashboard import Board

HEARTBEAT_S = _config.HEARTBEAT_S
# Messages drained from the socket at once when a worker dies (its last results).
DRAIN_BATCH = 512


class Daemon(Routing):
    """The reactor. Construct, then :meth:`run` (blocks), or take :meth:`step` s in turns."""

    def __init__(
        self,
        *,
        bind: list[str],
        key: bytes | None = None,
        supervisor: LocalSupervisor | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        max_message: int = _config.MAX_MESSAGE_BYTES,
        max_clients: int = _config.MAX_CLIENTS,
        max_queued: int = _config.MAX_QUEUED_PER_CLIENT,
    ) -> None:
        self.key = key
        self.max_message = max_message
        self.max_clients = max_clients
        self.max_queued = max_queued
        router = transport.make_socket(zmq.ROUTER)
        # A frame over the limit makes ZeroMQ drop that peer's connection before the bytes are
        # ever buffered; honest clients check first and get MessageTooLargeError instead.
        router.setsockopt(zmq.MAXMSGSIZE, max_message)
        self.chan = transport.Channel(router, key)
        self.chan.max_message = max_message  # the whole message, not one frame
        self.refusals = gate.Refusals(log)
        self._joining = {}
        # When a poll last found the socket read empty: all that came before is handled (see _tick).
        self._read_all_at = time.monotonic()
        self.endpoints: list[str] = []
        for endpoint in bind:
            self.chan.sock.bind(endpoint)
            self.endpoints.append(self.chan.sock.getsockopt_string(zmq.LAST_ENDPOINT))
        self.scheduler = Scheduler()
        # The object host connects over a private ipc:// endpoint when we listen on
        # tcp:// (each hop of a dict call is then cheaper; nothing else uses it).
        self.host_endpoint = self.endpoints[0] if self.endpoints else ""
        if self.host_endpoint.startswith("tcp://"):
            router.bind(f"ipc://@dmp-objhost-{os.getpid()}-{os.urandom(6).hex()}")
            self.host_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        # Shared objects; a dict, list or registered type starts the object host beside us.
        launcher = hostproc.SubprocessLauncher(self.host_endpoint, key, self.endpoints[0]) if self.endpoints else None
        self.objects = objects.ObjectServer(launcher)
        self.supervisor = supervisor
        self.heartbeat_s = heartbeat_s
        self.peers = Peers(self.scheduler, self.objects, heartbeat_s, supervised=supervisor is not None)
        self.locals: dict[str, LocalClient] = {}
        self.inbox: collections.deque[tuple[str, protocol.Message, list[Any]]] = collections.deque()
        self._wake = Wakeup(self)  # other threads may poke it until we are gone
        self._poller = Poller(self.chan)  # the socket, and the fds registered below (dmp_server.waiting)
        self._poller.register(self._wake.fd, zmq.POLLIN)
        # Calls on the reactor kinds from clients on this machine (dmp_server.door).
        self.door: Door | None = None
        if _config.direct_route() and self.endpoints and supervisor is None:  # not in a local Pool
            try:
                self.door = Door(key, self._wake.poke)
                self._poller.register(self.door.fd, zmq.POLLIN)
            except OSError:
                self.door = None
        self._door_call: FastCall | None = functools.partial(doorcall.serve, self) if self.door else None
        # Local mode's forked workers talk over pipes made before the fork (dmp_server.workerpipes).
        self.pipes: WorkerPipes | None = None
        if supervisor is not None and key is None and supervisor.method == "fork":
            self.pipes = WorkerPipes(max_message)
            supervisor.pipes = self.pipes
        self._watched: set[int] = set()
        self._next_tick = time.monotonic() + heartbeat_s
        # Next look for local workers past their task_timeout or the memory limit: no worker runs a task yet.
        self._check_at = time.monotonic() + _config.DEADLINE_CHECK_S
        self._due: float | None = None  # the shared objects' next deadline, as of the last poll
        self._stopping = False
        self.closed = False
        self.started = time.time()
        self._n_local = 0
        # `dmp manager --dashboard`'s board: a status snapshot is handed to it every PUBLISH_S.
        self.board: Board | None = None
        self._next_publish = time.monotonic()

    # --- from any thread ---------------------------------------------------------------

    def attach_local(self, client: LocalClient) -> str:
        """Register an in-process client before the first step; returns its peer id."""
        self._n_local += 1
        peer = f"local-{self._n_local}"
        self.locals[peer] = client
        self.scheduler.add_client(peer)
        return peer

    def post(self, peer: str, msg: protocol.Message, frames: list[Any]) -> None:
        """From any thread: queue a message of in-process client ``peer`` for the next step."""
        self.inbox.append((peer, msg, frames))
        self._wake.poke()

    def wake(self) -> None:
        """From any thread: make a :meth:`poll` in progress return soon."""
        self._wake.poke()

    def stop(self) -> None:
        """From any thread or a signal handler: make :meth:`run` return soon."""
        self._stopping = True
        self._wake.poke()

    # --- the thread taking steps ---------------------------------------------------------

    def run(self) -> None:
        """Take steps until :meth:`stop`, then :meth:`close`.

        With ``DMP_MANAGER_PROFILE=FILE`` in the environment, the steps run
        under cProfile and its stats are written to FILE at the end (see
        docs/performance.md; ``python -m tests.bench.scale --profile DIR``).
        """
        profile_to = os.environ.get("DMP_MANAGER_PROFILE")
        profiler = None
        if profile_to:
            import cProfile

            profiler = cProfile.Profile(time.thread_time)  # this thread's CPU: a loaded host inflates wall time
            profiler.enable()
        try:
            while not self._stopping:
                self.step(None)
        finally:
            self.close()
            if profiler is not None and profile_to:
                profiler.disable()
                profiler.dump_stats(profile_to)

    def close(self) -> None:
        """Tell remote peers we are going, and close the socket."""
        self._stopping = True
        self._shutdown_peers()
        if self.door is not None:
            self.door.close()
        self._poller.close()
        if self.pipes is not None:
            self.pipes.close()
        self.chan.close()
        self.closed = True
        self.locals.clear()  # in-process clients hold us (a reference cycle that kept a dropped pool's fds)

    def step(self, timeout: float | None) -> None:
        """Poll until the next timer or ``timeout`` seconds, handle what is ready, run due timers."""
        self.handle(self.poll(timeout))

    def poll(self, timeout: float | None) -> dict[Any, int]:
        """Wait until something is ready, the next timer is due, or ``timeout``; what is ready."""
        if self.supervisor is not None:
            self._watched = self.supervisor.watch(self._poller, self._watched)
            if self.pipes is not None and self.pipes.joined:
                self._join_pipes()
        wake_at = self._next_tick if self.board is None else min(self._next_tick, self._next_publish)
        if self.supervisor is not None and self._check_at < wake_at:
            wake_at = self._check_at
        self._due = deadline = self.objects.next_deadline()  # handle() runs what is due by then
        if deadline is not None and deadline < wake_at:
            wake_at = deadline
        before = time.monotonic()
        wait = max(0.0, wake_at - before)
        if timeout is not None and timeout < wait:
            wait = timeout
        ready = self._poller.poll(int(wait * 1000) + 1)
        if self.chan.sock not in ready:
            self._read_all_at = before
        return ready

    def handle(self, ready: dict[Any, int]) -> None:
        """Handle what :meth:`poll` found ready, then anything posted, then due timers."""
        if self.chan.sock in ready:
            self._receive()
        if self._wake.fd in ready:
            self._wake.clear()
        if (door := self.door) is not None and (door.joined or door.paused_at or len(ready) > 1 or self.chan.sock not in ready):
            door.serve(ready, self._poller, self._door_client, self._handle_client, self._door_call)  # skipped when only the ROUTER is ready
        if self.pipes is not None and self.pipes.by_fd:
            self.pipes.serve(ready, self._poller, self._from_pipe)
        if self.inbox:
            self._drain_inbox()
        if self._watched:  # local mode's worker sentinels
            for fd in self._watched.intersection(ready):
                self._worker_died(fd)
        now = time.monotonic()
        deadline = self._due
        if deadline is not None and now >= deadline:
            self._carry_out(self.objects.tick(now))
        if self.supervisor is not None and now >= self._check_at:
            self._kill_overdue(now)
        if now >= self._next_tick:
            late = now - self._next_tick
            self._next_tick = now + self.heartbeat_s
            self._tick(now, late)
        if self.board is not None and now >= self._next_publish:
            from dmp_server.dashboard import PUBLISH_S

            self._next_publish = now + PUBLISH_S
            self.board.publish(self.status())

    def handle_local(self, peer: str, msg: protocol.Message, frames: list[Any]) -> None:
        """On the stepping thread, between steps: a message of in-process client ``peer``, now."""
        if self.closed:
            return
        if self.pipes is not None and self.pipes.joined:
            self._join_pipes()  # workers just forked take this message's tasks at once
        if self.inbox:
            self._drain_inbox()  # what was posted before it goes first
        if type(msg) is protocol.Submit:  # the common case (apply_async, map chunks): a client may send it
            self._submit(peer, msg, frames)
        else:
            self._handle_client(peer, msg, frames)

    def _drain_socket(self) -> None:
        """Handle every message waiting now (up to DRAIN_BATCH)."""
        for _ in range(DRAIN_BATCH):
            if not self.chan.readable() or not self._receive():
                return

    def _receive(self) -> bool:
        """Handle one message from the socket; False if none was there.

        The loop calls this once per poll that finds the socket readable and
        lets the next poll look for more: asking ZeroMQ (``readable``) after
        each message would cost an extra system call per message.
        """
        try:
            ident, msg, frames = self.chan.recv(transport.NOBLOCK)
        except zmq.Again:
            return False
        except transport.Refused as refused:
            if self.chan.fresh is not None:
                self._admit(self.chan.fresh)
            self._refuse(refused)
            return True
        if ident is None:
            return True  # a ROUTER always names the sender; nothing to answer otherwise
        try:
            if self.chan.fresh is not None:
                self._admit(ident)  # its first message in the session proves the key
            self._handle_remote(ident, msg, frames)
        except Exception as exc:  # one bad peer must never stop the daemon
            self.refusals.refused(ident, f"bad {type(msg).__name__}: {exc!r}", time.monotonic())
            self._send_raw(ident, protocol.Error(ErrorCode.BAD_MESSAGE, f"malformed {type(msg).__name__}: {exc}"))
        return True

    def _from_pipe(self, ident: bytes, msg: protocol.Message, frames: list[Any]) -> None:
        """A message of a local worker over its pipe: as if it came over ZeroMQ."""
        self.chan.peer_address = ""  # a Hello's host is the worker's own word, as on ipc://
        try:
            self._handle_remote(ident, msg, frames)
        except Exception as exc:  # one bad peer must never stop the daemon
            self.refusals.refused(ident, f"bad {type(msg).__name__}: {exc!r}", time.monotonic())
            self._send_raw(ident, protocol.Error(ErrorCode.BAD_MESSAGE, f"malformed {type(msg).__name__}: {exc}"))

    def _join_pipes(self) -> None:
        """Workers forked onto pipes since the last step join: no Hello of theirs,
        no Welcome of ours (their config has our limit; see dmp_server.workerpipes)."""
        assert self.pipes is not None
        for ident, hello in self.pipes.watch(self._poller):
            self._join(ident, hello, hello.host)

    def _drain_inbox(self) -> None:
        inbox = self.inbox
        while inbox:
            peer, msg, frames = inbox.popleft()
            self._handle_client(peer, msg, frames)

    # --- worker deaths and peers going away ------------------------------------------------

    def _worker_died(self, fd: int) -> None:
        if self.supervisor is None:
            return
        if (exited := self.supervisor.reap(fd)) is None:
            return
        self._watched = self.supervisor.watch(self._poller, self._watched)  # (a new pipe may get fd's number now)
        # TaskDone it sent just before exiting may still be in the socket, or its pipe.
        if self.pipes is not None:
            self.pipes.drain(exited.worker, self._poller, self._from_pipe)
        self._drain_socket()
        peer_id = worker_peer(exited.worker)
        if exited.exitcode != 0:
            log.warning("worker %s (pid %d) %s", exited.worker, exited.pid, exited.cause)
        self._worker_exit(peer_id, exited.exitcode, exited.running, exited.timed_out, exited.cause)
        if self.supervisor.respawn and not self._stopping:
            self.supervisor.spawn()

    def _kill_overdue(self, now: float) -> None:
        """Local mode's task_timeout: kill workers past their task's deadline (their
        deaths then come through the sentinels, as timed out)."""
        assert self.supervisor is not None
        killed, upcoming = self.supervisor.kill_overdue(now)
        for pid, key in killed:
            log.warning("worker pid %d ran task %d past its timeout: killed", pid, key)
        for pid, key, rss in self.supervisor.kill_over_memory():
            log.warning("worker pid %d running task %d used %s, over the worker memory limit: killed",
                        pid, key, format_size(rss))
        self._check_at = now + _config.DEADLINE_CHECK_S
        if upcoming is not None and upcoming < self._check_at:
            self._check_at = upcoming

    def _tick(self, now: float, late: float = 0.0) -> None:
        """Expire silent peers (``late``: see Peers.tick; a backlog counts as late
        too) and peers that never proved the key, end the refusal log's interval, heartbeat the others."""
        # What came in time may wait unread behind a backlog (thousands of workers
        # saying Hello at once): silence is counted only up to when a poll last
        # found the socket read empty, so a peer is not blamed for our queue;
        # by at most BACKLOG_GRACE_BEATS beats (a manager saturated for good
        # still finds a dead peer).
        late = excused(now, late, self._read_all_at, self.heartbeat_s)
        deadline = now - self.heartbeat_s * LIVENESS - late
        while self._joining:  # a Hello answered more than LIVENESS beats ago, its proof never came
            ident = next(iter(self._joining))
            if self._joining[ident][2] >= deadline:
                break
            del self._joining[ident]  # answered, never proved the key
            if ident.hex() not in self.peers.by_id:
                self.chan.close_session(ident)
        if now >= self.refusals.window_end:
            self.refusals.flush(now)
        out = Departures()
        beat = self.peers.tick(now, out, late)
        for peer in out.gone:
            # A status probe that gave up waiting is routine; a node or client is news.
            log.log(logging.DEBUG if peer.role == Role.STATUS else logging.WARNING,
                    "%s went silent; dropping it", describe(peer))
            log.log(logging.INFO if peer.role in (Role.NODE, Role.CLIENT) else logging.DEBUG, "%s left", describe(peer))
        self._depart(out)
        if self.scheduler.queued_total:  # a job past its probe spreads now if nothing else came
            self._carry_out(self.scheduler.schedule())
        for peer in beat:
            if peer.ident is not None:
                self._send_raw(peer.ident, protocol.Heartbeat())

    def _shutdown_peers(self) -> None:
        for peer in list(self.peers.by_id.values()):
            if peer.ident is not None:
                self._send_raw(peer.ident, protocol.Bye("manager shutting down"))

    def status(self) -> dict[str, Any]:
        """The ``dmp status --json`` object (see dmp_server.status)."""
        address = self.endpoints[0] if self.endpoints else ""
        return status.report(address, self.started, self.peers, self.scheduler)

