"""The daemon's routing: what each message means, and where replies go.

    Hello --> version, limits (a worker's node must have joined) --> Welcome + session
          --> with a key: joining until the peer proves it, then admitted (a replayed Hello takes nothing)
    any other message --> its sender's role among the type's SENDERS? else Error(bad-message)
          --> the handler of its type (each type means one thing, whoever sends it):
    client: Submit / DefineJob / EndJob / CancelJob / SignalJob / Obj* --> Scheduler or ObjectServer
    worker: TaskDone --> Scheduler --> JobResults; TaskOutput --> JobOutput; TaskStarted --> JobTaskStarted
    node: WorkerExited, WorkerSpared  anyone: Heartbeat, Bye, StatusRequest (client, status)
    commands (Send, Kill) --> a local client's on_message, or the ROUTER

:class:`Routing` is the half of dmp_server.daemon.Daemon that turns decoded
messages into scheduler calls and commands into frames; the reactor half
owns the sockets and the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from dmp import _config
from dmp.deaths import WorkerDeath
from dmp.errors import ProtocolError
from dmp.wire import handshake, protocol, transport
from dmp.wire.protocol import ErrorCode, Role
from dmp_server import gate, objects
from dmp_server.door import Door
from dmp_server.peers import Departures, LocalClient, LocalSupervisor, Peer, Peers, describe
from dmp_server.scheduler import Command, Kill, Scheduler, Send
from dmp_server.waiting import Poller
from dmp_server.workerpipes import WorkerPipes

log = logging.getLogger("dmp.manager")


class Routing:
    """Message handlers and output; the attributes below are set by the daemon."""

    chan: transport.Channel
    key: bytes | None
    refusals: gate.Refusals
    # Peers whose Hello was answered, the key not proved yet: ident -> (Hello, address, when); no slot, no name.
    _joining: dict[bytes, tuple[protocol.Hello, str, float]]
    scheduler: Scheduler
    objects: objects.ObjectServer
    peers: Peers
    locals: dict[str, LocalClient]
    supervisor: LocalSupervisor | None
    heartbeat_s: float
    max_message: int
    max_clients: int
    max_queued: int
    pipes: WorkerPipes | None  # local mode's worker pipes (dmp_server.workerpipes)
    door: Door | None  # the direct route for calls on the reactor kinds (dmp_server.door)
    _poller: Poller

    def status(self) -> dict[str, Any]:
        """The ``dmp status --json`` object; dmp_server.daemon.Daemon provides it."""
        raise NotImplementedError

    # --- handlers ----------------------------------------------------------------------

    def _refuse(self, refused: transport.Refused) -> None:
        """Log (at a bounded rate) and answer (with a key: at most once an
        interval, unsigned unless the sender is in a session) a refused message."""
        ident = refused.ident
        first = self.refusals.refused(ident, str(refused.error), time.monotonic())
        if ident is None or not (first or self.key is None):  # without a key, every peer is trusted
            return
        if refused.reply is not None:
            in_session = self.chan.has_session(ident) and refused.reply.code != ErrorCode.UNKNOWN_PEER
            try:
                self.chan.send(refused.reply, to=ident, flags=transport.NOBLOCK, sign=in_session)
            except zmq.ZMQError:
                pass

    def _handle_remote(self, ident: bytes, msg: protocol.Message, frames: list[Any]) -> None:
        peer_id = ident.hex()
        peer = self.peers.by_id.get(peer_id)
        if isinstance(msg, protocol.Hello):
            self._hello(ident, peer_id, msg)
            return
        if peer is None:
            if not isinstance(msg, protocol.Bye):
                self._send_raw(ident, protocol.Error(ErrorCode.UNKNOWN_PEER, "say Hello first"))
            return
        peer.last_seen = time.monotonic()
        self._dispatch(peer_id, peer.role, msg, frames)

    def _dispatch(self, peer_id: str, role: str, msg: protocol.Message, frames: list[Any]) -> None:
        """Hand ``msg`` to the handler of its type, if a ``role`` peer may send it."""
        cls = type(msg)
        if role not in _SENDERS[cls]:
            text = f"a {role} may not send {cls.__name__}"
            self._send(peer_id, protocol.Error(ErrorCode.BAD_MESSAGE, text), [])
            return
        handler = _HANDLERS.get(cls)
        if handler is not None:
            handler(self, peer_id, msg, frames)
        elif isinstance(msg, objects.MESSAGES):
            self._carry_out(self.objects.handle(peer_id, msg, frames, time.monotonic()))
        # Heartbeat: its arrival was the point (last_seen, above)

    def _task_done(self, peer_id: str, msg: protocol.TaskDone, frames: list[Any]) -> None:
        if protocol.count_frames(msg.items, 3, width=6) != len(frames):
            raise ProtocolError("TaskDone items do not match their frames")
        gate.check_results(msg.items)
        sends = self.scheduler.take_results(peer_id, msg.items, frames)  # checked: they leave before the books
        try:
            self._carry_out(sends)
        finally:
            self._carry_out(self.scheduler.settle())

    def _worker_exited(self, peer_id: str, msg: protocol.WorkerExited, frames: list[Any]) -> None:
        cause = WorkerDeath.from_wire(msg.cause, msg.exitcode)
        self._worker_exit(worker_peer(msg.worker), msg.exitcode, msg.running, bool(msg.timed_out), cause)

    def _status_request(self, peer_id: str, msg: protocol.StatusRequest, frames: list[Any]) -> None:
        self._send(peer_id, protocol.StatusReply(self.status()), [])

    def _bye(self, peer_id: str, msg: protocol.Bye, frames: list[Any]) -> None:
        self._forget(peer_id)  # a status probe done, too: gone now, not when it goes silent

    def _hello(self, ident: bytes, peer_id: str, msg: protocol.Hello) -> None:
        """Answer a Hello. With a key the peer is admitted only once it proves
        the key in its new session (:meth:`_admit`): a replayed Hello gets a
        Welcome nobody can use, and takes nothing from anyone."""
        if msg.role not in (Role.CLIENT, Role.WORKER, Role.NODE, Role.STATUS):
            self._send_raw(ident, protocol.Error(ErrorCode.BAD_MESSAGE, f"unknown role {msg.role!r}"))
            return
        for name, owner in protocol.Hello.ROLE_FIELDS.items():
            if owner != msg.role and getattr(msg, name):
                text = f"Hello.{name} is a {owner}'s; a {msg.role} leaves it at its default"
                self._send_raw(ident, protocol.Error(ErrorCode.BAD_MESSAGE, text))
                return
        ours = protocol.software_version()
        if msg.version != ours:
            text = f"the manager runs {ours}, this {msg.role} runs {msg.version or 'an unknown version'}"
            log.warning("refused %s %s from %s: %s", msg.role, msg.name, msg.host, text)
            self._send_raw(ident, protocol.Error(ErrorCode.VERSION, text))
            return
        if msg.role == Role.NODE:
            try:
                _config.check_resources(msg.resources, "Hello.resources")
            except ValueError as exc:
                self._send_raw(ident, protocol.Error(ErrorCode.BAD_MESSAGE, str(exc)))
                return
        refusal = self._refusal(msg)
        if refusal:
            self._send_raw(ident, protocol.Error(ErrorCode.REFUSED, refusal))
            return
        host = self.chan.peer_address or msg.host
        nonce = self.chan.open_session(ident)
        door = self.door.address if self.door is not None else ""
        welcome = protocol.Welcome(peer_id, self.heartbeat_s, len(self.scheduler.workers), self.max_message, nonce, door)
        if self.key is None:
            self._send_raw(ident, welcome)
            self._join(ident, msg, host)
            return
        self._joining.pop(ident, None)
        self._joining[ident] = (msg, host, time.monotonic())
        while len(self._joining) > handshake.MAX_PENDING:
            del self._joining[next(iter(self._joining))]
        self._send_raw(ident, welcome)

    def _refusal(self, msg: protocol.Hello) -> str:
        """Why a peer may not join now ("" if it may)."""
        if msg.role == Role.WORKER and self.supervisor is None and self.peers.node(msg.node) is None:
            # A worker of a node not (yet, or no longer) joined: an orphan of a dead node must not become a slot.
            return f"node {msg.node!r} has not joined"
        if msg.role == Role.CLIENT and self.peers.count(Role.CLIENT) >= self.max_clients:
            log.warning("refused client %s from %s: at the limit of %d clients", msg.name, msg.host, self.max_clients)
            return f"the manager is at its limit of {self.max_clients} clients"
        return ""

    def _admit(self, ident: bytes) -> None:
        """The peer at ``ident`` proved the key in the session its Hello opened: it joins."""
        joining = self._joining.pop(ident, None)
        if joining is None:
            return
        msg, host, _ = joining
        refusal = self._refusal(msg)
        if refusal:
            self.chan.close_session(ident)
            self._send_raw(ident, protocol.Error(ErrorCode.REFUSED, refusal))
            return
        self._join(ident, msg, host)

    def _join(self, ident: bytes, msg: protocol.Hello, host: str) -> None:
        peer_id = ident.hex()
        if peer_id in self.peers.by_id:
            self._forget(peer_id, crashed=True, keep_session=True)  # a reconnect under the same identity: start clean
        resources: dict[str, float] = {}
        if msg.role == Role.NODE:  # checked in _hello before any Welcome
            resources = _config.check_resources(msg.resources, "Hello.resources")
        now = time.monotonic()
        self.peers.add(Peer(peer_id, ident, msg.role, msg.name, host, msg.pid, msg.node, now, msg.version))
        if msg.role == Role.WORKER:
            self._carry_out(self.scheduler.add_worker(peer_id, msg.node, msg.pid, msg.max_tasks))
        elif msg.role == Role.CLIENT:
            self.scheduler.add_client(peer_id, msg.max_workers)  # Pool(k)
        elif msg.role == Role.NODE:
            self._carry_out(self.scheduler.add_node(msg.name, resources))
        # Nodes and clients at INFO; a worker process or a status probe at DEBUG.
        level = logging.INFO if msg.role in (Role.NODE, Role.CLIENT) else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "%s joined (pid %s)", self._who(peer_id), msg.pid)

    def _handle_client(self, peer: str, msg: protocol.Message, frames: list[Any]) -> None:
        """A message of client ``peer``: remote, or in this process (local mode)."""
        self._dispatch(peer, Role.CLIENT, msg, frames)

    def _door_client(self, peer_id: str) -> bool:
        """Whether the door may take calls for ``peer_id``: a joined client."""
        peer = self.peers.by_id.get(peer_id)
        return peer is not None and peer.role == Role.CLIENT

    def _submit(self, peer: str, msg: protocol.Submit, frames: list[Any]) -> None:
        sched = self.scheduler
        # An in-process client's Submit is this process's own Session.submit: well formed by construction.
        if peer not in self.locals and (
            protocol.count_frames(msg.tasks, 1) != len(frames) or any(len(t) != 2 for t in msg.tasks)
        ):
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

    def _define_job(self, peer: str, msg: protocol.DefineJob, frames: list[Any]) -> None:
        try:
            timeout = _config.check_timeout(msg.timeout or None, "DefineJob.timeout")
            resources = _config.check_resources(msg.resources, "DefineJob.resources")
        except ValueError as exc:
            self._send(peer, protocol.Error(ErrorCode.BAD_MESSAGE, str(exc), msg.job), [])
            return
        self._carry_out(
            self.scheduler.define_job(peer, msg.job, frames, msg.max_retries, timeout, resources, msg.idle_only)
        )

    def _end_job(self, peer: str, msg: protocol.EndJob, frames: list[Any]) -> None:
        self._carry_out(self.scheduler.end_job(peer, msg.job))

    def _cancel_job(self, peer: str, msg: protocol.CancelJob, frames: list[Any]) -> None:
        self._carry_out(self.scheduler.cancel_job(peer, msg.job))

    def _task_started(self, peer_id: str, msg: protocol.TaskStarted, frames: list[Any]) -> None:
        task = self.scheduler.tasks.get(msg.task)
        if task is not None and task.worker == peer_id:  # only its own worker may announce it
            task.started = True  # a signal for its job now goes to its worker (Scheduler.signal_job)
            job = task.job
            self._send(job.client, protocol.JobTaskStarted(job.job_id, task.task_id, msg.pid, msg.node), [])

    def _signal_job(self, peer: str, msg: protocol.SignalJob, frames: list[Any]) -> None:
        """Process.terminate/kill in cluster mode (Scheduler.signal_job)."""
        self._carry_out(self.scheduler.signal_job(peer, msg.job, msg.signum))

    def _kill_worker(self, peer_id: str, signum: int, spare: list[int] | None = None) -> None:
        """Signal a worker process: ourselves in local mode, through its node otherwise (``spare``: cancels.py)."""
        if self.supervisor is not None:
            if self.supervisor.kill(_worker_id(peer_id), spare or (), signum) is not None:  # spared
                self._carry_out(self.scheduler.spared(peer_id))
            return
        worker = self.scheduler.workers.get(peer_id)
        node = self.peers.node(worker.node) if worker is not None else None
        if worker is not None and node is not None and node.ident is not None:
            self._send_raw(node.ident, protocol.SignalWorker(_worker_id(peer_id), worker.pid, signum, spare or []))

    def _worker_spared(self, peer_id: str, msg: protocol.WorkerSpared, frames: list[Any]) -> None:
        self._carry_out(self.scheduler.spared(worker_peer(msg.worker), self.peers.by_id[peer_id].name))

    def _task_output(self, peer_id: str, msg: protocol.TaskOutput, frames: list[Any]) -> None:
        task = self.scheduler.tasks.get(msg.task)
        if task is None:
            log.info("output from %s outside any task: %s", msg.origin, msg.text[:200])
            return
        job = task.job
        out = protocol.JobOutput(job.job_id, task.task_id, msg.stream, msg.text, msg.origin)
        self._send(job.client, out, [])

    def _worker_exit(
        self, peer_id: str, exitcode: int, running: int, timed_out: bool = False, cause: WorkerDeath | None = None
    ) -> None:
        out = Departures()
        self.peers.worker_exit(peer_id, exitcode, running, time.monotonic(), out, timed_out, cause)
        self._depart(out)

    # --- peers going away ---------------------------------------------------------------

    def _forget(self, peer_id: str, *, crashed: bool = False, keep_session: bool = False) -> None:
        """``peer_id`` is gone: it said Bye, or it ``crashed`` (back under its identity with a
        new Hello: then ``keep_session``, the one that Hello opened)."""
        peer = self.peers.by_id.get(peer_id)
        if peer is not None:
            level = logging.INFO if peer.role in (Role.NODE, Role.CLIENT) else logging.DEBUG
            log.log(level, "%s left", describe(peer))
        out = Departures()
        self.peers.forget(peer_id, out, local=peer_id in self.locals, crashed=crashed)
        if keep_session:
            out.gone = [p for p in out.gone if p.id != peer_id]
        self._depart(out)

    def _depart(self, out: Departures) -> None:
        """End the sessions of the peers gone and dropped, and carry out what their going means."""
        for peer in out.gone + out.dropped:
            if peer.ident is not None:
                self.chan.close_session(peer.ident)
        self._carry_out(out.cmds)

    # --- output --------------------------------------------------------------------------

    def _carry_out(self, cmds: list[Command]) -> None:
        for cmd in cmds:
            if isinstance(cmd, Send):
                self._send(cmd.to, cmd.msg, cmd.frames)
            elif isinstance(cmd, Kill):
                self._kill_worker(cmd.worker, cmd.signum, cmd.spare)

    def _send(self, peer_id: str, msg: protocol.Message, frames: list[Any]) -> None:
        door = self.door
        if door is not None and door.routes and type(msg) is protocol.ObjReply:
            conn = door.routes.pop((peer_id, msg.ref), None)
            if conn is not None:  # the request came through the door: so does its reply
                door.reply(conn, msg, frames, self._poller)
                return
        local = self.locals.get(peer_id)
        if local is not None:
            local.on_message(msg, frames)
            return
        known = self.peers.by_id.get(peer_id)
        ident = known.ident if known is not None else bytes.fromhex(peer_id)
        if ident is not None:
            self._send_raw(ident, msg, frames)

    def _send_raw(self, ident: bytes, msg: protocol.Message, frames: list[Any] | None = None) -> None:
        pipes = self.pipes
        if pipes is not None and pipes.send(ident, msg, frames or [], self._poller):
            return  # a local worker's pipe (dmp_server.workerpipes)
        try:
            self.chan.send(msg, frames or [], to=ident, flags=transport.NOBLOCK)
        except zmq.ZMQError as exc:
            # EHOSTUNREACH: the peer is gone; EAGAIN: it stopped reading. Liveness checks will drop it.
            log.debug("could not send %s to %s: %s", type(msg).__name__, self._who(ident.hex()), exc)

    def _who(self, peer_id: str | None) -> str:
        """A peer as logs name it: role, name and host, never its socket id."""
        return self.peers.who(peer_id, local=peer_id in self.locals)


# The handler of each message type a peer may send (Obj* and Host*: the ObjectServer).
_HANDLERS: dict[type[protocol.Message], Callable[[Routing, str, Any, list[Any]], None]] = {
    protocol.TaskDone: Routing._task_done,
    protocol.TaskOutput: Routing._task_output,
    protocol.TaskStarted: Routing._task_started,
    protocol.WorkerExited: Routing._worker_exited,
    protocol.WorkerSpared: Routing._worker_spared,
    protocol.Submit: Routing._submit,
    protocol.DefineJob: Routing._define_job,
    protocol.EndJob: Routing._end_job,
    protocol.CancelJob: Routing._cancel_job,
    protocol.SignalJob: Routing._signal_job,
    protocol.StatusRequest: Routing._status_request,
    protocol.Bye: Routing._bye,
}

# A type's senders as peer roles: the object host is a client peer.
_SENDERS = {
    cls: frozenset(Role.CLIENT if s == "host" else s for s in cls.SENDERS) for cls in protocol.message_types().values()
}


def senders(cls: type[protocol.Message]) -> frozenset[str]:
    """The roles that may send message type ``cls`` to the manager (none: only the manager sends it)."""
    return _SENDERS[cls]


def worker_peer(worker_id: str) -> str:
    """A worker's peer id from its worker id (its ZeroMQ identity)."""
    return worker_id.encode().hex()


def _worker_id(peer_id: str) -> str:
    try:
        return bytes.fromhex(peer_id).decode()
    except (ValueError, UnicodeDecodeError):
        return peer_id
