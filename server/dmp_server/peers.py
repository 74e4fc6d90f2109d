"""The daemon's peer bookkeeping, without I/O: who joined, who went silent, who is leaving.

The daemon (dmp_server/daemon.py) records a peer at its Hello and asks here
what a departure means; the answers are scheduler commands and the peers to
heartbeat or whose sessions to close, which the daemon carries out.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from dmp import _config
from dmp.deaths import WorkerDeath
from dmp.wire import protocol
from dmp.wire.protocol import Role
from dmp_server import objects
from dmp_server.scheduler import Command, Scheduler

# Every peer beats as our Welcome says and counts the same LIVENESS (both in
# dmp._config); expiry is checked once a beat, so with the default 1 s beat a
# node that vanishes is declared lost 4 to 5 s after its last heartbeat.
LIVENESS = _config.LIVENESS
# Beats of a backlog in the manager's own socket not held against a peer's
# silence or key proof (see excused): twice the LIVENESS window.
BACKLOG_GRACE_BEATS = 2 * LIVENESS
# How long a cleanly exited worker's Bye may lag its supervisor's report.
EXIT_GRACE_S = 2.0


class LocalClient(Protocol):
    """An in-process client (embedded mode): its ``dmp.client.session.Session``."""

    def on_message(self, msg: protocol.Message, frames: list[Any]) -> None: ...


class LocalSupervisor(Protocol):
    """Embedded mode's worker supervisor (see dmp.node.supervisor.Supervisor)."""

    respawn: bool
    method: str  # the workers' start method: forked ones get pipes
    pipes: Any  # set by the daemon: where spawn hands the parent end of a fork's pipe

    def watch(self, poller: Any, watched: set[int]) -> set[int]: ...
    def reap(self, fd: int) -> Any: ...
    def spawn(self) -> str: ...
    def kill(self, worker_id: str, spare: Collection[int] = (), signum: int = ...) -> int | None: ...
    def kill_overdue(self, now: float) -> tuple[list[tuple[int, int]], float | None]: ...
    def kill_over_memory(self) -> list[tuple[int, int, int]]: ...


@dataclass(slots=True, eq=False)
class Peer:
    id: str
    ident: bytes | None
    role: str
    name: str
    host: str
    pid: int
    node: str
    last_seen: float
    version: str = ""  # what its Hello said: dmp's and Python's versions


@dataclass(slots=True)
class Departures:
    """What forgetting peers means: commands to carry out, sessions to close.

    ``gone``: the peers forgotten (logged as leaving); ``dropped``: peers
    removed with them or after them unannounced (a node's workers, an exited
    worker), whose sessions end too.
    """

    cmds: list[Command] = field(default_factory=list)
    gone: list[Peer] = field(default_factory=list)
    dropped: list[Peer] = field(default_factory=list)


class PeerTable(dict[str, Peer]):
    """Peers by id, indexed by node name and counted by role as they are set and
    popped, so a worker's Hello finds its node, a client's Hello the client
    count, and a worker's exit the clients its process made (same host and
    pid), without a scan of every peer."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, Peer] = {}
        self.counts: dict[str, int] = {}
        self.clients_at: dict[tuple[str, int], dict[str, Peer]] = {}

    def __setitem__(self, peer_id: str, peer: Peer) -> None:
        self.pop(peer_id, None)
        super().__setitem__(peer_id, peer)
        self.counts[peer.role] = self.counts.get(peer.role, 0) + 1
        if peer.role == Role.NODE:
            self.nodes[peer.name] = peer
        elif peer.role == Role.CLIENT:
            self.clients_at.setdefault((peer.host, peer.pid), {})[peer_id] = peer

    def __delitem__(self, peer_id: str) -> None:
        self.pop(peer_id)

    def pop(self, peer_id: str, *default: Any) -> Any:
        if peer_id not in self:
            if default:
                return default[0]
            raise KeyError(peer_id)
        peer = super().pop(peer_id)
        self.counts[peer.role] -= 1
        if peer.role == Role.CLIENT:
            at = self.clients_at.get((peer.host, peer.pid))
            if at is not None:
                at.pop(peer_id, None)
                if not at:
                    del self.clients_at[(peer.host, peer.pid)]
        elif peer.role == Role.NODE and self.nodes.get(peer.name) is peer:
            # Rare (a node leaves), so a scan: another node of that name may remain.
            same = [p for p in self.values() if p.role == Role.NODE and p.name == peer.name]
            if same:
                self.nodes[peer.name] = same[-1]
            else:
                del self.nodes[peer.name]
        return peer

    def clear(self) -> None:
        super().clear()
        self.nodes.clear()
        self.counts.clear()
        self.clients_at.clear()


class Peers:
    """Remote peers by id (ident.hex()), and workers that exited cleanly awaiting their Bye."""

    def __init__(
        self, scheduler: Scheduler, shared: objects.ObjectServer, heartbeat_s: float, *, supervised: bool = False
    ) -> None:
        self.scheduler = scheduler
        self.shared = shared
        self.heartbeat_s = heartbeat_s
        self.supervised = supervised  # embedded mode: our own supervisor watches the workers
        self.by_id = PeerTable()
        self.exiting: dict[str, float] = {}

    def add(self, peer: Peer) -> None:
        """Record a peer that joined (one already under its id is replaced)."""
        self.by_id[peer.id] = peer

    def _pop(self, peer_id: str) -> Peer | None:
        peer: Peer | None = self.by_id.pop(peer_id, None)
        return peer

    def who(self, peer_id: str | None, local: bool = False) -> str:
        """A peer as logs name it: role, name and host, never its socket id; ``local``: in-process."""
        peer = self.by_id.get(peer_id) if peer_id else None
        if peer is None:
            return f"local client {peer_id}" if local else "an unknown peer"
        return describe(peer)

    def node(self, name: str) -> Peer | None:
        """The joined node called ``name`` (the latest to join under it), or None."""
        return self.by_id.nodes.get(name)

    def count(self, role: str) -> int:
        return self.by_id.counts.get(role, 0)

    def forget(self, peer_id: str, out: Departures, *, local: bool = False, crashed: bool = False) -> None:
        """A peer said Bye, went silent or said Hello again; ``local``: an in-process client;
        ``crashed``: it never said goodbye (the locks it held are released)."""
        peer = self._pop(peer_id)
        if peer is not None:
            out.gone.append(peer)
        elif not local:
            return
        role = peer.role if peer else Role.CLIENT
        sched = self.scheduler
        if role == Role.WORKER:
            # A worker's Bye comes after its last results: nothing is running.
            self.exiting.pop(peer_id, None)
            out.cmds += sched.remove_worker(peer_id, 0, -1)
        elif role == Role.CLIENT:
            out.cmds += sched.remove_client(peer_id)
            out.cmds += self.shared.peer_gone(peer_id, crashed=crashed)
        elif role == Role.NODE:
            if peer is not None:
                sched.remove_node(peer.name)
            for worker in [w for w in sched.workers.values() if w.node == (peer.name if peer else "")]:
                self._clients_of(self.by_id.get(worker.peer), out, crashed=True)
                self._drop(worker.peer, out)
                out.cmds += sched.remove_worker(worker.peer, None)

    def _drop(self, peer_id: str, out: Departures) -> None:
        """Remove a peer without telling the scheduler; its session ends (``out.dropped``)."""
        peer = self._pop(peer_id)
        if peer is not None:
            out.dropped.append(peer)

    def worker_exit(
        self, peer_id: str, exitcode: int, running: int, now: float, out: Departures, timed_out: bool = False,
        cause: WorkerDeath | None = None,
    ) -> None:
        """A worker process exited (its node or our supervisor says so)."""
        self._clients_of(self.by_id.get(peer_id), out, crashed=exitcode != 0)
        if exitcode == 0 and running < 0 and peer_id in self.scheduler.workers:
            # A clean exit: the worker said Bye after its last results, on its
            # own socket, which may still be in flight. Wait for it a little,
            # or its finished tasks would be run twice.
            self.exiting[peer_id] = now + EXIT_GRACE_S
            return
        self._drop(peer_id, out)
        out.cmds += self.scheduler.remove_worker(peer_id, exitcode, running, timed_out, cause)

    def _clients_of(self, worker: Peer | None, out: Departures, *, crashed: bool) -> None:
        """The connections a worker process made as a client (its tasks' proxies, Pipe ends,
        pools: same host, same pid) end with it, now rather than after missed heartbeats:
        what they held is released and a Pipe end it held is closed (EOF for the other end)."""
        if worker is None or worker.role != Role.WORKER or not worker.pid:
            return
        for peer in list(self.by_id.clients_at.get((worker.host, worker.pid), {}).values()):
            self.forget(peer.id, out, crashed=crashed)

    def tick(self, now: float, out: Departures, late: float = 0.0) -> list[Peer]:
        """Once a beat: expire late Byes and silent peers; returns the peers to heartbeat.

        ``late``: how far past due this tick runs; the reactor heard nobody
        meanwhile (a loaded host held it up, and it reads one message per
        poll), so that time is not held against its peers.
        """
        for peer_id, until in list(self.exiting.items()):
            if until <= now:
                del self.exiting[peer_id]
                self._drop(peer_id, out)
                out.cmds += self.scheduler.remove_worker(peer_id, 0, -1)
        deadline = now - self.heartbeat_s * LIVENESS - late
        # A node's idle workers beat once every WORKER_BEATS beats (their node answers for them).
        worker_deadline = now - self.heartbeat_s * LIVENESS * _config.WORKER_BEATS - late
        beat = []
        for peer in list(self.by_id.values()):
            if self._silent(peer, worker_deadline if peer.role == Role.WORKER else deadline):
                self.forget(peer.id, out, crashed=True)
            elif peer.role in (Role.CLIENT, Role.NODE) and peer.ident is not None:
                beat.append(peer)
        return beat

    def _silent(self, peer: Peer, deadline: float) -> bool:
        """A remote peer not heard from since ``deadline``. A busy worker may be
        silent (its node vouches for it); an idle one heartbeats."""
        if peer.last_seen >= deadline:
            return False
        if peer.role != Role.WORKER:
            return True
        worker = self.scheduler.workers.get(peer.id)
        return not self.supervised and (worker is None or not worker.assigned)


def excused(now: float, late: float, read_all_at: float, heartbeat_s: float) -> float:
    """Seconds of a peer's silence (or wait for its key proof) not held against it:
    ``late``, how far past due the check runs, or, if longer, how long ago a poll
    last found the socket read empty (what came since may wait unread behind a
    backlog, such as thousands of workers saying Hello at once), that by at most
    BACKLOG_GRACE_BEATS beats, so a manager saturated for good still finds a dead peer."""
    return max(late, min(now - read_all_at, heartbeat_s * BACKLOG_GRACE_BEATS))


def describe(peer: Peer) -> str:
    """``role name on host`` (a client also by pid), as logs name a peer."""
    name = peer.name if peer.role != Role.CLIENT else f"{peer.name} (pid {peer.pid})"
    return f"{peer.role} {name or '?'} on {peer.host or '?'}"
