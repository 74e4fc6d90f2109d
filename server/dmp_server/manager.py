"""The manager reactor: one zmq.Poller, run by one thread at a time.

    clients --(ROUTER)--> decode + verify --> Scheduler --> commands --> route
    workers --(ROUTER)-->      "          --> Scheduler -->    "     -->   "
    nodes   --(ROUTER)--> WorkerExited / Heartbeat
    local client (embedded mode) --> inbox deque + eventfd --> same handlers
    local supervisor (embedded mode) --> sentinel fds --> worker deaths

Each loop: poll until the next timer, take one message from the socket (the
next poll finds the rest) and all that the other ready sources hold, run due
timers (peer expiry). The same class runs as the ``dmp manager`` daemon and
embedded in a user's process for local mode; payloads are never unpickled.

As a daemon, :meth:`run`'s thread is the only one. Embedded, a user thread
waiting on a result may take the reactor's turn (:meth:`wait`) and a
posting thread may handle its own message (:meth:`post`) while run()'s
thread steps back: a local round trip then wakes no thread but the worker
and the caller. ``_turn`` makes the turns exclusive; handlers never lock.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import zmq

from dmp import _config
from dmp.client.sigint import critical, interruptible
from dmp.client.turns import Followers, Wakeup
from dmp.errors import AuthenticationError, ProtocolError
from dmp.wire import protocol, transport
from dmp.wire.protocol import ErrorCode, Role
from dmp_server import hostproc, objects
from dmp_server.scheduler import Command, Kill, Scheduler, Send

log = logging.getLogger("dmp.manager")

VERSION = "0.1.0"
# Every peer beats as our Welcome says and counts the same LIVENESS (both in
# dmp._config); expiry is checked once a beat, so with the default 1 s beat a
# node that vanishes is declared lost 4 to 5 s after its last heartbeat.
HEARTBEAT_S = _config.HEARTBEAT_S
LIVENESS = _config.LIVENESS
# Embedded mode: after a caller ran the reactor, run()'s thread stays out of
# its way this long (the caller will likely wait again at once); a leading
# caller polls in slices of LEAD_SLICE_S, noticing stop(); a caller asking
# run()'s thread to hand over waits this long per try.
STEP_BACK_S = 0.01
LEAD_SLICE_S = 0.1
HANDOVER_S = 0.02
# How long a cleanly exited worker's Bye may lag its supervisor's report.
EXIT_GRACE_S = 2.0
# Messages drained from the socket at once when a worker dies (its last results).
DRAIN_BATCH = 512


class LocalClient(Protocol):
    """An in-process client (embedded mode): its ``dmp.client.session.Session``."""

    def on_message(self, msg: protocol.Message, frames: list[Any]) -> None: ...


class LocalSupervisor(Protocol):
    """Embedded mode's worker supervisor (see dmp.node.supervisor.Supervisor)."""

    respawn: bool

    def watch(self, poller: Any, watched: set[int]) -> set[int]: ...
    def reap(self, fd: int) -> Any: ...
    def spawn(self) -> str: ...
    def kill(self, worker_id: str) -> None: ...
    def kill_overdue(self, now: float) -> tuple[list[tuple[int, int]], float | None]: ...


@dataclass(slots=True, eq=False)
class Peer:
    id: str
    ident: bytes | None
    role: str
    name: str
    host: str
    pid: int
    node: str
    slots: int
    last_seen: float
    since: float


class Manager:
    """The reactor. Construct, then :meth:`run` (blocks) in the owning thread."""

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
        # A frame over the limit makes ZeroMQ drop that peer's connection
        # before the bytes are ever buffered; honest clients check first and
        # get MessageTooLargeError instead.
        router.setsockopt(zmq.MAXMSGSIZE, max_message)
        self.chan = transport.Channel(router, key)
        self.endpoints: list[str] = []
        for endpoint in bind:
            self.chan.sock.bind(endpoint)
            self.endpoints.append(self.chan.sock.getsockopt_string(zmq.LAST_ENDPOINT))
        self.scheduler = Scheduler()
        # The object host connects over a private ipc:// endpoint when we listen on
        # tcp:// (each hop of a dict call is then cheaper; nothing else uses it).
        self.host_endpoint = self.endpoints[0] if self.endpoints else ""
        if self.host_endpoint.startswith("tcp://"):
            router.bind(f"ipc://@dmp-objhost-{os.getpid()}-{uuid.uuid4().hex[:12]}")
            self.host_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        # Shared objects; a dict, list or registered type starts the object host beside us.
        launcher = hostproc.SubprocessLauncher(self.host_endpoint, key, self.endpoints[0]) if self.endpoints else None
        self.objects = objects.ObjectServer(launcher)
        self.supervisor = supervisor
        self.heartbeat_s = heartbeat_s
        self.peers: dict[str, Peer] = {}
        self.locals: dict[str, LocalClient] = {}
        self.inbox: collections.deque[tuple[str, protocol.Message, list[Any]]] = collections.deque()
        self._wake = Wakeup(self)  # other threads may poke it until we are gone
        self._poller = zmq.Poller()
        self._poller.register(self.chan.sock, zmq.POLLIN)
        self._poller.register(self._wake.fd, zmq.POLLIN)
        self._watched: set[int] = set()
        self._next_tick = time.monotonic() + heartbeat_s
        self._check_at = 0.0  # next look for overdue local workers (task_timeout)
        # Who runs the reactor: run()'s thread, or (embedded mode) a caller
        # waiting on a result; _turn is held for the whole turn, poll included.
        self._turn = threading.Lock()
        self._runner = 0  # thread ident holding the turn
        self._leader = 0  # thread ident of a caller leading
        self._want_lead = False
        self._last_led = 0.0
        self._resume = threading.Event()
        self._followers = Followers()
        self._stopping = False
        self._closed = False
        self._exiting: dict[str, float] = {}  # workers that exited cleanly, awaiting their Bye
        self.started = time.time()
        self._n_local = 0

    # --- thread-safe entry points ------------------------------------------------

    def attach_local(self, client: LocalClient) -> str:
        """Register an in-process client; call before :meth:`run` or via post."""
        self._n_local += 1
        peer = f"local-{self._n_local}"
        self.locals[peer] = client
        self.scheduler.add_client(peer)
        return peer

    def post(self, peer: str, msg: protocol.Message, frames: list[Any]) -> None:
        """From any thread: a message from in-process client ``peer``.

        Handled right here when nobody is running the reactor (a caller that
        just waited stepped in for run()'s thread); otherwise queued for
        whoever runs it, in order.
        """
        with critical:  # a Ctrl-C never leaves the turn taken or the message half handled
            if self._turn.acquire(blocking=False):
                try:
                    if not self._closed:
                        self._runner = threading.get_ident()
                        if self.inbox:
                            self._drain_inbox()
                        self._handle_client(peer, msg, frames)
                        return
                finally:
                    self._runner = 0
                    self._turn.release()
            self.inbox.append((peer, msg, frames))
            self._wake.poke()

    def stop(self) -> None:
        """From any thread: make :meth:`run` return soon."""
        self._stopping = True
        self._wake.poke()
        self._resume.set()

    # --- the loop ------------------------------------------------------------------

    def run(self) -> None:
        """Serve until :meth:`stop`. This thread runs the reactor whenever no waiting caller does."""
        try:
            while not self._stopping:
                if self._callers_lead():
                    self._resume.wait(STEP_BACK_S)
                    self._resume.clear()
                    continue
                if not self._turn.acquire(timeout=STEP_BACK_S):
                    continue
                try:
                    self._runner = threading.get_ident()
                    self._step(None)
                finally:
                    self._runner = 0
                    self._turn.release()
        finally:
            # A caller still leading notices _stopping within LEAD_SLICE_S and lets go.
            held = self._turn.acquire(timeout=5.0)
            try:
                self._shutdown_peers()
                self.chan.close()
                self._closed = True
            finally:
                if held:
                    self._turn.release()

    def _callers_lead(self) -> bool:
        """A caller runs the reactor, wants to, or did a moment ago (it will again)."""
        return bool(self._leader or self._want_lead) or time.monotonic() - self._last_led < STEP_BACK_S

    def _step(self, limit: float | None) -> None:
        """One turn (``_turn`` held): poll until the next timer or ``limit``, handle what is ready."""
        poller = self._poller
        sock = self.chan.sock
        if self.supervisor is not None:
            self._watched = self.supervisor.watch(poller, self._watched)
        wake_at = self._next_tick
        if self.supervisor is not None and self._check_at < wake_at:
            wake_at = self._check_at
        deadline = self.objects.next_deadline()
        if deadline is not None and deadline < wake_at:
            wake_at = deadline
        timeout = max(0.0, wake_at - time.monotonic())
        if limit is not None and limit < timeout:
            timeout = limit
        with interruptible:  # a waiting caller's Ctrl-C lands here, never in what follows
            ready = dict(poller.poll(int(timeout * 1000) + 1))
        with critical:
            if sock in ready:
                self._receive()
            if self._wake.fd in ready:
                self._wake.clear()
            if self.inbox:
                self._drain_inbox()
            for fd in self._watched.intersection(ready):
                self._worker_died(fd)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self._carry_out(self.objects.tick(now))
            if self.supervisor is not None and now >= self._check_at:
                self._kill_overdue(now)
            if now >= self._next_tick:
                late = now - self._next_tick
                self._next_tick = now + self.heartbeat_s
                self._tick(now, late)

    # --- callers running the reactor (embedded mode) -------------------------------------

    def wait(self, done: Callable[[], bool], block: Callable[[float | None], Any], timeout: float | None) -> None:
        """From a thread waiting on a result: run the reactor here until ``done()`` or ``timeout``.

        The result's own delivery then wakes no other thread. One caller leads
        at a time; others ``block(timeout)`` on their own event, served by
        the leader, or by :meth:`run`'s thread once the leader lets go. A
        Ctrl-C is raised only while waiting (see dmp.client.sigint).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        me = threading.get_ident()
        while not done():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            if self._runner == me or self._stopping or self._closed:
                # A callback on the reactor's own turn cannot run it again: it waits, as in multiprocessing.
                with interruptible:
                    block(remaining)
                return
            with critical:
                if not self._take_turn():
                    if not self._leader:
                        continue  # run()'s thread is handing over
                    self._followers.wait(block, remaining)
                    return
                try:
                    self._want_lead = False
                    self._leader = self._runner = me
                    while not done() and not self._stopping:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            break
                        self._step(LEAD_SLICE_S if left is None else min(LEAD_SLICE_S, left))
                finally:
                    self._leader = self._runner = 0
                    self._last_led = time.monotonic()
                    self._turn.release()
                    if self._followers.count:
                        self._last_led = 0.0
                        self._resume.set()  # run()'s thread serves them from now on

    def _take_turn(self) -> bool:
        """The reactor's turn for a caller, asking run()'s thread to step back if it has it."""
        if self._turn.acquire(blocking=False):
            return True
        if self._leader:
            return False
        self._want_lead = True
        self._wake.poke()
        return self._turn.acquire(timeout=HANDOVER_S)

    def runs_here(self) -> bool:
        """Whether this thread is running the reactor right now (a callback, say)."""
        return self._runner == threading.get_ident()

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
            self._refuse(refused)
            return True
        assert ident is not None
        try:
            self._handle_remote(ident, msg, frames)
        except Exception as exc:  # one bad peer must never stop the daemon
            log.warning("bad %s from %s: %r", type(msg).__name__, self._who(ident.hex()), exc)
            self._send_raw(ident, protocol.Error(ErrorCode.BAD_MESSAGE, f"malformed {type(msg).__name__}: {exc}"))
        return True

    def _drain_inbox(self) -> None:
        inbox = self.inbox
        while inbox:
            peer, msg, frames = inbox.popleft()
            self._handle_client(peer, msg, frames)

    # --- handlers ----------------------------------------------------------------------

    def _refuse(self, refused: transport.Refused) -> None:
        log.warning("refused a message from %s: %s", self._who(_peer_id(refused.ident)), refused.error)
        if refused.ident is None:
            return
        error = refused.error
        if isinstance(error, AuthenticationError):
            if self.chan.has_session(refused.ident) or isinstance(error, transport.Unsigned):
                code = ErrorCode.AUTH  # a peer without the key: it must stop, not say Hello again
            else:
                # No session: a peer with the right key that we forgot (we
                # restarted) can verify this Error and says Hello again; one
                # with a wrong key cannot, and reports AuthenticationError.
                code = ErrorCode.UNKNOWN_PEER
        elif "version" in str(error):
            code = ErrorCode.VERSION
        else:
            code = ErrorCode.BAD_MESSAGE
        self._send_raw(refused.ident, protocol.Error(code, str(error)))

    def _handle_remote(self, ident: bytes, msg: protocol.Message, frames: list[Any]) -> None:
        peer_id = ident.hex()
        peer = self.peers.get(peer_id)
        if isinstance(msg, protocol.Hello):
            self._hello(ident, peer_id, msg)
            return
        if peer is None:
            if not isinstance(msg, protocol.Bye):
                self._send_raw(ident, protocol.Error(ErrorCode.UNKNOWN_PEER, "say Hello first"))
            return
        peer.last_seen = time.monotonic()
        if peer.role == Role.WORKER:
            if isinstance(msg, protocol.Results):
                if protocol.count_frames(msg.items, 3, width=6) != len(frames):
                    raise ProtocolError("Results items do not match their frames")
                self._carry_out(self.scheduler.results(peer_id, msg.items, frames))
            elif isinstance(msg, protocol.Output):
                self._forward_output(msg)
            elif isinstance(msg, protocol.TaskStarted):
                self._forward_started(msg)
            elif isinstance(msg, protocol.Bye):
                self._forget(peer_id)
            elif not isinstance(msg, protocol.Heartbeat):
                self._send_raw(ident, protocol.Error(ErrorCode.BAD_MESSAGE, f"workers may not send {type(msg).__name__}"))
        elif peer.role == Role.CLIENT:
            self._handle_client(peer_id, msg, frames)
        elif peer.role == Role.NODE:
            if isinstance(msg, protocol.WorkerExited):
                self._worker_exit(self._worker_peer(msg.worker), msg.exitcode, msg.running, bool(msg.timed_out))
            elif isinstance(msg, protocol.Bye):
                self._forget(peer_id)
        elif isinstance(msg, protocol.StatusRequest):
            self._send(peer_id, protocol.StatusReply(self.status()), [])

    def _hello(self, ident: bytes, peer_id: str, msg: protocol.Hello) -> None:
        if msg.role not in (Role.CLIENT, Role.WORKER, Role.NODE, Role.STATUS):
            self._send_raw(ident, protocol.Error(ErrorCode.BAD_MESSAGE, f"unknown role {msg.role!r}"))
            return
        if peer_id in self.peers:
            self._forget(peer_id)  # a reconnect under the same identity: start clean
        if msg.role == Role.WORKER and self.supervisor is None and not any(
            p.role == Role.NODE and p.name == msg.node for p in self.peers.values()
        ):
            # A worker of a node we do not know: its node is not (yet, or no
            # longer) joined. An orphan of a dead node must not become a slot.
            self._send_raw(ident, protocol.Error(ErrorCode.REFUSED, f"node {msg.node!r} has not joined"))
            return
        if msg.role == Role.CLIENT and sum(1 for p in self.peers.values() if p.role == Role.CLIENT) >= self.max_clients:
            log.warning("refused client %s from %s: at the limit of %d clients", msg.name, msg.host, self.max_clients)
            self._send_raw(ident, protocol.Error(ErrorCode.REFUSED, f"the manager is at its limit of {self.max_clients} clients"))
            return
        resources: dict[str, float] = {}
        if msg.role == Role.NODE:
            try:
                resources = _config.check_resources(msg.resources, "Hello.resources")
            except ValueError as exc:
                self._send_raw(ident, protocol.Error(ErrorCode.BAD_MESSAGE, str(exc)))
                return
        now = time.monotonic()
        host = self.chan.peer_address or msg.host
        self.peers[peer_id] = Peer(peer_id, ident, msg.role, msg.name, host, msg.pid, msg.node, msg.slots, now, now)
        nonce = self.chan.open_session(ident)
        welcome = protocol.Welcome(peer_id, VERSION, self.heartbeat_s, len(self.scheduler.workers), self.max_message, nonce)
        self._send_raw(ident, welcome)
        if msg.role == Role.WORKER:
            self._carry_out(self.scheduler.add_worker(peer_id, msg.node, msg.pid, msg.max_tasks))
        elif msg.role == Role.CLIENT:
            self.scheduler.add_client(peer_id, msg.slots)  # a client's slots: Pool(k)
        elif msg.role == Role.NODE:
            self._carry_out(self.scheduler.add_node(msg.name, resources))
        # Nodes and clients at INFO; a worker process or a status probe at DEBUG.
        level = logging.INFO if msg.role in (Role.NODE, Role.CLIENT) else logging.DEBUG
        log.log(level, "%s joined (pid %s)", self._who(peer_id), msg.pid)

    def _handle_client(self, peer: str, msg: protocol.Message, frames: list[Any]) -> None:
        sched = self.scheduler
        if isinstance(msg, objects.MESSAGES):
            self._carry_out(self.objects.handle(peer, msg, frames, time.monotonic()))
        elif isinstance(msg, protocol.Submit):
            if protocol.count_frames(msg.tasks, 1) != len(frames) or any(len(t) != 2 for t in msg.tasks):
                self._send(peer, protocol.Error(ErrorCode.BAD_MESSAGE, "frame count mismatch", msg.job), [])
                return
            client = sched.clients.get(peer)
            if client is not None and client.queued + len(msg.tasks) > self.max_queued:
                text = f"the manager holds {client.queued} queued tasks of this client, its limit is {self.max_queued}"
                self._send(peer, protocol.Error(ErrorCode.REFUSED, text, msg.job), [])
                return
            tasks = []
            pos = 0
            for task_id, n in msg.tasks:
                tasks.append((task_id, frames[pos : pos + n]))
                pos += n
            self._carry_out(sched.submit(peer, msg.job, tasks))
        elif isinstance(msg, protocol.DefineJob):
            try:
                timeout = _config.check_timeout(msg.timeout or None, "DefineJob.timeout")
                resources = _config.check_resources(msg.resources, "DefineJob.resources")
            except ValueError as exc:
                self._send(peer, protocol.Error(ErrorCode.BAD_MESSAGE, str(exc), msg.job), [])
                return
            self._carry_out(sched.define_job(peer, msg.job, frames, msg.max_retries, timeout, resources))
        elif isinstance(msg, protocol.EndJob):
            self._carry_out(sched.end_job(peer, msg.job))
        elif isinstance(msg, protocol.CancelJob):
            self._carry_out(sched.cancel_job(peer, msg.job))
        elif isinstance(msg, protocol.SignalJob):
            self._signal_job(peer, msg.job, msg.signum)
        elif isinstance(msg, protocol.StatusRequest):
            self._send(peer, protocol.StatusReply(self.status()), [])
        elif isinstance(msg, protocol.Bye):
            self._forget(peer)
        elif not isinstance(msg, protocol.Heartbeat):
            self._send(peer, protocol.Error(ErrorCode.BAD_MESSAGE, f"clients may not send {type(msg).__name__}"), [])

    def _forward_started(self, msg: protocol.TaskStarted) -> None:
        task = self.scheduler.tasks.get(msg.task)
        if task is not None:
            job = task.job
            self._send(job.client, protocol.TaskStarted(job.job_id, task.task_id, msg.pid, msg.node), [])

    def _signal_job(self, peer: str, job_id: int, signum: int) -> None:
        """Process.terminate/kill in cluster mode: signal the workers running the job."""
        for worker in list(self.scheduler.workers.values()):
            if any(t.job.client == peer and t.job.job_id == job_id for t in worker.assigned.values()):
                self._kill_worker(worker.peer, signum)

    def _kill_worker(self, peer_id: str, signum: int) -> None:
        """Signal a worker process: ourselves in local mode, through its node otherwise."""
        if self.supervisor is not None:
            self.supervisor.kill(_worker_id(peer_id))
            return
        worker = self.scheduler.workers.get(peer_id)
        node = next((p for p in self.peers.values() if p.role == Role.NODE and worker and p.name == worker.node), None)
        if worker is not None and node is not None and node.ident is not None:
            self._send_raw(node.ident, protocol.SignalWorker(_worker_id(peer_id), worker.pid, signum))

    def _forward_output(self, msg: protocol.Output) -> None:
        task = self.scheduler.tasks.get(msg.task)
        if task is None:
            log.info("output from %s outside any task: %s", msg.origin, msg.text[:200])
            return
        job = task.job
        out = protocol.Output(job.job_id, task.task_id, msg.stream, msg.text, msg.origin)
        self._send(job.client, out, [])

    # --- worker deaths -------------------------------------------------------------------

    def _worker_died(self, fd: int) -> None:
        assert self.supervisor is not None
        exited = self.supervisor.reap(fd)
        if exited is None:
            return
        # Results it sent just before exiting may still be in the socket.
        self._drain_socket()
        peer_id = self._worker_peer(exited.worker)
        if exited.exitcode != 0:
            log.warning("worker %s (pid %d) died: exit %d", exited.worker, exited.pid, exited.exitcode)
        self._worker_exit(peer_id, exited.exitcode, exited.running, exited.timed_out)
        if self.supervisor.respawn and not self._stopping:
            self.supervisor.spawn()

    def _kill_overdue(self, now: float) -> None:
        """Local mode's task_timeout: kill workers past their task's deadline (their
        deaths then come through the sentinels, as timed out)."""
        assert self.supervisor is not None
        killed, upcoming = self.supervisor.kill_overdue(now)
        for pid, key in killed:
            log.warning("worker pid %d ran task %d past its timeout: killed", pid, key)
        self._check_at = now + _config.DEADLINE_CHECK_S
        if upcoming is not None and upcoming < self._check_at:
            self._check_at = upcoming

    def _worker_exit(self, peer_id: str, exitcode: int, running: int, timed_out: bool = False) -> None:
        if exitcode == 0 and running < 0 and peer_id in self.scheduler.workers:
            # A clean exit: the worker said Bye after its last results, on its
            # own socket, which may still be in flight. Wait for it a little,
            # or its finished tasks would be run twice.
            self._exiting[peer_id] = time.monotonic() + EXIT_GRACE_S
            return
        self.peers.pop(peer_id, None)
        self._carry_out(self.scheduler.remove_worker(peer_id, exitcode, running, timed_out))

    @staticmethod
    def _worker_peer(worker_id: str) -> str:
        return worker_id.encode().hex()

    # --- peers going away ----------------------------------------------------------------------

    def _forget(self, peer_id: str) -> None:
        if peer_id in self.peers:
            peer_ = self.peers[peer_id]
            level = logging.INFO if peer_.role in (Role.NODE, Role.CLIENT) else logging.DEBUG
            log.log(level, "%s left", self._who(peer_id))
        peer = self.peers.pop(peer_id, None)
        if peer is not None and peer.ident is not None:
            self.chan.close_session(peer.ident)
        if peer is None and peer_id not in self.locals:
            return
        role = peer.role if peer else Role.CLIENT
        if role == Role.WORKER:
            # A worker's Bye comes after its last results: nothing is running.
            self._exiting.pop(peer_id, None)
            self._carry_out(self.scheduler.remove_worker(peer_id, 0, -1))
        elif role == Role.CLIENT:
            self._carry_out(self.scheduler.remove_client(peer_id))
            self._carry_out(self.objects.peer_gone(peer_id))
        elif role == Role.NODE:
            if peer is not None:
                self.scheduler.remove_node(peer.name)
            for worker in [w for w in self.scheduler.workers.values() if w.node == (peer.name if peer else "")]:
                self.peers.pop(worker.peer, None)
                self._carry_out(self.scheduler.remove_worker(worker.peer, None))

    def _tick(self, now: float, late: float = 0.0) -> None:
        """Expire silent peers, heartbeat the others. ``late``: how far past due this tick
        runs; the reactor heard nobody meanwhile (a loaded host held it up, and it
        reads one message per poll), so that time is not held against its peers."""
        for peer_id, until in list(self._exiting.items()):
            if until <= now:
                del self._exiting[peer_id]
                self.peers.pop(peer_id, None)
                self._carry_out(self.scheduler.remove_worker(peer_id, 0, -1))
        deadline = now - self.heartbeat_s * LIVENESS - late
        for peer in list(self.peers.values()):
            if peer.role in (Role.CLIENT, Role.NODE, Role.STATUS) and peer.last_seen < deadline:
                # A status probe that gave up waiting is routine; a node or client is news.
                level = logging.DEBUG if peer.role == Role.STATUS else logging.WARNING
                log.log(level, "%s went silent; dropping it", self._who(peer.id))
                self._forget(peer.id)
            elif peer.role in (Role.CLIENT, Role.NODE) and peer.ident is not None:
                self._send_raw(peer.ident, protocol.Heartbeat())

    def _shutdown_peers(self) -> None:
        for peer in list(self.peers.values()):
            if peer.ident is not None:
                self._send_raw(peer.ident, protocol.Bye("manager shutting down"))

    # --- output --------------------------------------------------------------------------

    def _carry_out(self, cmds: list[Command]) -> None:
        for cmd in cmds:
            if isinstance(cmd, Send):
                self._send(cmd.to, cmd.msg, cmd.frames)
            elif isinstance(cmd, Kill):
                self._kill_worker(cmd.worker, signal.SIGKILL)

    def _send(self, peer_id: str, msg: protocol.Message, frames: list[Any]) -> None:
        local = self.locals.get(peer_id)
        if local is not None:
            local.on_message(msg, frames)
            return
        known = self.peers.get(peer_id)
        ident = known.ident if known is not None else bytes.fromhex(peer_id)
        if ident is not None:
            self._send_raw(ident, msg, frames)

    def _send_raw(self, ident: bytes, msg: protocol.Message, frames: list[Any] = ()) -> None:  # type: ignore[assignment]
        try:
            self.chan.send(msg, frames, to=ident, flags=transport.NOBLOCK)
        except zmq.ZMQError as exc:
            # EHOSTUNREACH: the peer is gone; EAGAIN: it stopped reading. Either
            # way this message cannot go now; liveness checks will drop the peer.
            log.debug("could not send %s to %s: %s", type(msg).__name__, self._who(ident.hex()), exc)

    def _who(self, peer_id: str | None) -> str:
        """A peer as logs name it: role, name and host, never its socket id."""
        peer = self.peers.get(peer_id) if peer_id else None
        if peer is None:
            return "an unknown peer" if peer_id not in self.locals else f"local client {peer_id}"
        name = peer.name if peer.role != Role.CLIENT else f"{peer.name} (pid {peer.pid})"
        return f"{peer.role} {name or '?'} on {peer.host or '?'}"

    # --- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        sched = self.scheduler
        nodes: dict[str, dict[str, Any]] = {}
        for peer in self.peers.values():
            if peer.role == Role.NODE:
                nodes[peer.name] = {
                    "name": peer.name, "host": peer.host, "slots": 0, "busy": 0,
                    "tasks_done": 0, "last_heartbeat_s": round(now - peer.last_seen, 3),
                }
        for w in sched.workers.values():
            node = nodes.setdefault(w.node, {
                "name": w.node, "host": "", "slots": 0, "busy": 0, "tasks_done": 0, "last_heartbeat_s": 0.0,
            })
            node["slots"] += 1
            node["busy"] += 1 if w.assigned else 0
            node["tasks_done"] += w.done
        for name, entry in nodes.items():
            declared = sched.nodes.get(name)
            if declared is not None and declared.total:  # dmp worker --resources
                entry["resources"] = dict(declared.total)
                entry["resources_free"] = dict(declared.free)
        clients = []
        for c in sched.clients.values():
            cpeer = self.peers.get(c.peer)
            clients.append({
                "id": c.peer, "host": cpeer.host if cpeer else "local", "queued": c.queued,
                "running": c.running, "workers": len(c.on), "max_workers": c.max_workers,
            })
        return {
            "manager": {
                "address": self.endpoints[0] if self.endpoints else "",
                "version": VERSION,
                "uptime_s": round(time.time() - self.started, 1),
            },
            "slots": len(sched.workers),
            "busy": sched.busy_workers(),
            "queued": sched.queued(),
            "nodes": list(nodes.values()),
            "clients": clients,
        }


def _worker_id(peer_id: str) -> str:
    try:
        return bytes.fromhex(peer_id).decode()
    except (ValueError, UnicodeDecodeError):
        return peer_id


def _peer_id(ident: bytes | None) -> str | None:
    return ident.hex() if ident else None
