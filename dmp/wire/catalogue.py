"""Every message type dmp peers exchange, each meaning one thing in one direction.

docs/protocol.md is the table of this module and dmp.wire.objcatalogue (a
unit test keeps them in step, senders and receivers included). Who talks to whom:

    client --DefineJob/Submit/EndJob/CancelJob/SignalJob--> manager --Dispatch/ForgetJobs--> worker
    worker --TaskDone/TaskStarted/TaskOutput--> manager --JobResults/JobTaskStarted/JobOutput--> client
    node --WorkerExited/WorkerSpared--> manager --SignalWorker--> node
    client --Obj*--> manager --HostCall/HostDrop--> object host --HostReady/HostReply--> manager
        (those in dmp.wire.objcatalogue)

A worker speaks of tasks by the manager's task *key*, the manager to a client of
its job id and task id: each side has its own types, never one whose fields
change meaning with the direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from dmp.wire.codec import Message, message

# Senders and receivers: a Role's value, "host" (the object host, a client
# peer) or "manager".
M = ("manager",)
ANY_PEER = ("client", "worker", "node", "status")
EITHER = ("client", "worker", "node", "status", "manager")
CLIENT, WORKER, NODE, HOST = ("client",), ("worker",), ("node",), ("host",)


# --- session and liveness ----------------------------------------------------


@message(1, ANY_PEER, M)
@dataclass(slots=True)
class Hello(Message):
    """A peer introduces itself. Reply: Welcome, or Error. The fields after
    ``nonce`` belong to one role each (ROLE_FIELDS); the others leave them at their defaults."""

    ROLE_FIELDS: ClassVar[dict[str, str]] = {"max_workers": "client", "node": "worker", "max_tasks": "worker", "resources": "node"}
    role: str
    name: str
    host: str
    pid: int
    version: str = ""  # software_version(): dmp and Python; must equal the manager's
    nonce: bytes = b""  # with an authkey: the peer's fresh challenge (dmp.wire.handshake)
    max_workers: int = 0  # clients: run at most this many tasks at once (Pool(k)); 0: no cap
    node: str = ""  # workers: the node they belong to
    max_tasks: int = 0  # workers: tasks before they exit (0 = no limit)
    resources: dict[str, Any] = field(default_factory=dict)  # nodes: name -> amount they have


@message(2, M, ANY_PEER)
@dataclass(slots=True)
class Welcome(Message):
    """The manager accepts a Hello."""

    peer_id: str
    heartbeat_s: float
    slots: int = 0  # worker slots in the cluster now
    max_message: int = 0  # bytes; larger messages are refused (0: no limit)
    nonce: bytes = b""  # with an authkey: the manager's half of the session nonce
    direct: str = ""  # clients: where the manager's door takes their calls directly ("" for none)


@message(3, EITHER, EITHER)
@dataclass(slots=True)
class Heartbeat(Message):
    """Liveness; either direction."""


@message(4, EITHER, EITHER)
@dataclass(slots=True)
class Bye(Message):
    """The sender is leaving (or telling the peer to go)."""

    reason: str = ""


@message(5, M, ANY_PEER)
@dataclass(slots=True)
class Error(Message):
    """Something the peer sent was refused. ``ref`` names the job it concerns (0: none)."""

    code: str
    text: str
    ref: int = 0


# --- tasks: client -> manager ------------------------------------------------


@message(10, CLIENT, M)
@dataclass(slots=True)
class DefineJob(Message):
    """A job's runner (payload frames; may be none): each task runs as ``runner(task)``
    (without one, the task is a callable). ``max_retries`` bounds reruns after worker
    deaths, ``timeout`` (s, 0: none) each run; ``resources`` (name -> amount) are held on
    the node per running task; ``idle_only``: tasks go only to idle workers, never queued."""

    job: int
    nframes: int
    max_retries: int = 3
    timeout: float = 0.0
    resources: dict[str, Any] = field(default_factory=dict)
    idle_only: bool = False


@message(11, CLIENT, M)
@dataclass(slots=True)
class Submit(Message):
    """Tasks of a job. ``tasks`` = [[task id, nframes], ...]."""

    job: int
    tasks: list[list[int]] = field(default_factory=list)


@message(12, CLIENT, M)
@dataclass(slots=True)
class EndJob(Message):
    """No more tasks for this job; forget it when done."""

    job: int


@message(13, CLIENT, M)
@dataclass(slots=True)
class CancelJob(Message):
    """Drop the job's queued tasks and abort running ones."""

    job: int


@message(19, CLIENT, M)
@dataclass(slots=True)
class SignalJob(Message):
    """Send ``signum`` to the processes running this job's tasks
    (``Process.terminate``/``kill`` in cluster mode)."""

    job: int
    signum: int


# --- tasks: manager <-> worker -----------------------------------------------


@message(14, M, WORKER)
@dataclass(slots=True)
class Dispatch(Message):
    """Job runners the worker lacks, then tasks to run, in order.

    ``jobs`` = [[job key, nframes, timeout seconds (0: none)], ...];
    ``tasks`` = [[task key, job key, attempt, nframes], ...].
    """

    jobs: list[list[Any]] = field(default_factory=list)
    tasks: list[list[int]] = field(default_factory=list)


@message(16, M, WORKER)
@dataclass(slots=True)
class ForgetJobs(Message):
    """Drop these job runners (job keys) from the cache."""

    jobs: list[int] = field(default_factory=list)


@message(15, WORKER, M)
@dataclass(slots=True)
class TaskDone(Message):
    """Outcomes of dispatched tasks, batched. ``items`` = [[task key,
    attempt, status, nframes, run seconds, info], ...]; ``info`` is "" (a
    worker reports only OK and RAISED)."""

    items: list[list[Any]] = field(default_factory=list)


@message(17, WORKER, M)
@dataclass(slots=True)
class TaskOutput(Message):
    """A line task ``task`` (a task key) printed. ``stream`` is 'stdout' or
    'stderr'; ``origin`` names node and pid."""

    task: int
    stream: str
    text: str
    origin: str = ""


@message(18, WORKER, M)
@dataclass(slots=True)
class TaskStarted(Message):
    """A remote Process's task ``task`` (a task key) began, in process ``pid`` of ``node``."""

    task: int
    pid: int
    node: str = ""


# --- tasks: manager -> client ------------------------------------------------


@message(24, M, CLIENT)
@dataclass(slots=True)
class JobResults(Message):
    """Outcomes of a client's tasks, batched. ``items`` = [[job, task id,
    status, nframes, info], ...]; ``info`` is "" except for LOST, where it is
    [text, node, pid, exitcode, cause], TIMEOUT, where it is [text, node, pid,
    timeout], and CANCELLED and REFUSED, where it is a text."""

    items: list[list[Any]] = field(default_factory=list)


@message(25, M, CLIENT)
@dataclass(slots=True)
class JobOutput(Message):
    """A line task ``task`` of job ``job`` printed (see TaskOutput)."""

    job: int
    task: int
    stream: str
    text: str
    origin: str = ""


@message(26, M, CLIENT)
@dataclass(slots=True)
class JobTaskStarted(Message):
    """Task ``task`` of job ``job`` (a remote Process) began, in process ``pid`` of ``node``."""

    job: int
    task: int
    pid: int
    node: str = ""


# --- nodes and status --------------------------------------------------------


@message(20, NODE, M)
@dataclass(slots=True)
class WorkerExited(Message):
    """A worker process ended. ``running``: the task key it was running (-1:
    none), from its shared slot; ``timed_out``: 1 if the node killed it past
    its deadline; ``cause``: what the node knows (dmp.deaths.WorkerDeath)."""

    worker: str
    pid: int
    exitcode: int
    running: int = -1
    timed_out: int = 0
    cause: dict[str, Any] = field(default_factory=dict)


@message(23, M, NODE)
@dataclass(slots=True)
class SignalWorker(Message):
    """Send ``signum`` to worker process ``worker`` (its pid). With ``spare``
    (a cancel's kill: the worker's other tasks' keys), not while it runs one of
    them: the node answers WorkerSpared instead."""

    worker: str
    pid: int
    signum: int
    spare: list[int] = field(default_factory=list)


@message(27, NODE, M)
@dataclass(slots=True)
class WorkerSpared(Message):
    """The node did not kill ``worker`` (pid ``pid``) for a SignalWorker with
    ``tasks``: it runs none of them now (``running``: its task key, -1: none)."""

    worker: str
    pid: int
    running: int = -1


@message(21, ("client", "status"), M)
@dataclass(slots=True)
class StatusRequest(Message):
    """Ask for the cluster status."""


@message(22, M, ("client", "status"))
@dataclass(slots=True)
class StatusReply(Message):
    """The status object of ``dmp status --json``."""

    status: dict[str, Any] = field(default_factory=dict)
