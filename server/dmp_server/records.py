"""The scheduler's records: the commands it returns, and the clients, jobs,
tasks, nodes and workers it keeps (see dmp_server.scheduler, which owns them).
"""

from __future__ import annotations

import signal
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dmp.wire import protocol


@dataclass(slots=True)
class Send:
    """Command: send ``msg`` with payload ``frames`` to peer ``to``."""

    to: str
    msg: protocol.Message
    frames: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class Kill:
    """Command: send worker ``worker`` ``signum``, unless it runs one of ``spare``
    (a cancel's: the worker's tasks of other jobs; its node checks, and the
    worker is spared); no ``spare``: whatever it runs."""

    worker: str
    spare: list[int] = field(default_factory=list)
    signum: int = int(signal.SIGKILL)


Command = Send | Kill


@dataclass(slots=True, eq=False)
class Task:
    key: int
    job: Job
    task_id: int
    frames: list[Any]
    attempt: int = 0
    worker: str = ""
    last_loss: list[Any] = field(default_factory=list)  # [text, node, pid, exitcode, cause dict]
    held: Node | None = None  # the node whose resources it holds (given to a worker there)
    started: bool = False  # its worker said TaskStarted (a Process's: announced tasks only)


@dataclass(slots=True, eq=False)
class Job:
    key: int
    client: str
    job_id: int
    runner: list[Any]
    max_retries: int
    pending: deque[Task] = field(default_factory=deque)
    outstanding: int = 0
    ended: bool = False
    holders: set[str] = field(default_factory=set)  # workers that cached the runner
    timeout: float = 0.0  # seconds each task may run (0: no limit)
    resources: dict[str, float] = field(default_factory=dict)  # each task's need, held while it runs
    refused: str = ""  # why no joined node could ever satisfy ``resources`` ("": one could)
    idle_only: bool = False  # each task only to an idle worker (never queued behind another)
    timed: bool = False  # a task of it has finished: only then may a worker take its tasks in batches
    first_out: float = 0.0  # when its first task was given to a worker (the scheduler's clock; 0: not yet)


@dataclass(slots=True, eq=False)
class Client:
    peer: str
    jobs: dict[int, Job] = field(default_factory=dict)
    active: deque[Job] = field(default_factory=deque)  # jobs with pending tasks, FIFO
    queued: int = 0
    running: int = 0
    max_workers: int = 0  # Pool(k) in a cluster: at most k workers at once (0: no cap)
    on: dict[str, int] = field(default_factory=dict)  # worker -> this client's tasks there
    done: int = 0  # outcomes delivered (returned, raised, lost)
    failed: int = 0  # of which were errors
    retried: int = 0  # reruns after a worker died


@dataclass(slots=True)
class Totals:
    """Counters since the manager started (the dashboard's and /metrics' figures)."""

    done: int = 0
    failed: int = 0
    retried: int = 0
    workers_lost: int = 0
    last_lost: str = ""  # how the last lost worker died, in words (dmp.deaths)


@dataclass(slots=True, eq=False)
class Node:
    """What a node declared it has (``dmp worker --resources``), and what is free now."""

    name: str
    total: dict[str, float]
    free: dict[str, float]

    def covers(self, need: dict[str, float], *, now: bool) -> bool:
        have = self.free if now else self.total
        return all(have.get(name, 0.0) >= amount for name, amount in need.items())


@dataclass(slots=True, eq=False)
class Worker:
    peer: str
    node: str
    pid: int
    tasks_left: int  # before it exits by itself (maxtasksperchild); -1: no limit
    assigned: dict[int, Task] = field(default_factory=dict)  # in dispatch order
    done: int = 0
    doomed: int = 0  # Kills sent and not answered (by its death or WorkerSpared): gets no more work
