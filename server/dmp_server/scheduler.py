"""The task scheduler: a state machine with no I/O.

Events come in as method calls (a client submits, a worker reports results,
a worker dies); each returns the commands to carry out (messages to send,
workers to kill). The manager's reactor and the local engine both drive it,
which is what makes local mode and cluster mode one engine.

    client --DefineJob/Submit--> [job queues, per client] --round robin-->
        [worker credit] --Dispatch--> worker --TaskDone--> [match attempt]
        --JobResults--> client

Two limits travel with a job's definition. ``timeout``: the worker's node
(or the local supervisor) kills a worker whose task runs past it, and
:meth:`Scheduler.remove_worker` fails that task alone as TIMEOUT, never
retried. ``resources``: each task runs only on a node that declared enough of
them free (``Scheduler.add_node``), and holds them there from the moment it
is given to a worker until its outcome; such a task is given only to an idle
worker, so it never waits behind another task while holding them.

Payload frames pass through untouched: this module never unpickles.
Which task goes to which worker (credit, fairness, resources) is
``placement.py``; cancelling a job on the workers, ``cancels.py``; this module
keeps the books of peers, jobs and outcomes.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

from dmp.deaths import WorkerDeath, loss_text
from dmp.wire import protocol
from dmp.wire.protocol import Status
from dmp_server.cancels import Cancels
from dmp_server.hungry import Hungry
from dmp_server.records import Client, Command, Job, Kill, Node, Send, Task, Totals, Worker

__all__ = ["Client", "Command", "Job", "Kill", "Node", "Scheduler", "Send", "Task", "Totals", "Worker"]

# How much work (in seconds of task run time) to keep queued at each worker so
# it never waits for the next Dispatch; a dispatch round trip costs ~0.1 ms, so
# 2 ms of queued work hides it even for microsecond tasks, while long tasks get
# one at a time and are never stuck behind a busy worker.
PREFETCH_SECONDS = 0.002
MAX_IN_FLIGHT = 256
# Before any task has finished, nothing is known of durations: keep one task
# queued behind the running one to hide the dispatch round trip.
INITIAL_IN_FLIGHT = 2
# Smoothing of the task duration estimate (exponentially weighted mean).
EWMA_ALPHA = 0.2


class Scheduler(Cancels):
    """Queues tasks per client, spreads them over worker credit fairly.

    This half keeps the books (peers, jobs, outcomes, retries); ``Cancels``
    (cancels.py) withdraws a cancelled job's tasks and kills the workers running
    them; ``Placement`` (placement.py) decides which queued task goes to which worker.
    """

    def __init__(self) -> None:
        self.clients: dict[str, Client] = {}
        self.workers: dict[str, Worker] = {}
        self.tasks: dict[int, Task] = {}
        self.nodes: dict[str, Node] = {}  # by name: their declared resources
        self._ready: deque[Client] = deque()  # clients with pending tasks, round robin
        self.hungry = Hungry()  # workers that may take tasks, without a scan
        self.clock = time.monotonic
        self.queued_total = 0  # tasks waiting in any client's queue
        self._next_task = 1
        self._next_job = 1
        self.est_run_s: float | None = None
        self.in_flight = INITIAL_IN_FLIGHT  # tasks a worker may hold, from est_run_s
        self.tasks_done = 0
        self.totals = Totals()
        # What take_results took and settle has still to book: (worker, [(task, status, run_s)], items).
        self._unsettled: tuple[Worker, list[tuple[Task, int, float]], int] | None = None

    # --- peers ------------------------------------------------------------

    def add_client(self, peer: str, max_workers: int = 0) -> None:
        self.clients.setdefault(peer, Client(peer, max_workers=max(0, max_workers)))

    def remove_client(self, peer: str) -> list[Command]:
        """A client left or died: drop its queued work, kill what it runs."""
        client = self.clients.pop(peer, None)
        if client is None:
            return []
        if client in self._ready:
            self._ready.remove(client)
        client.active.clear()
        cmds: list[Command] = []
        for job in list(client.jobs.values()):
            cmds += self._cancel(client, job, notify=False)
        return cmds

    def add_node(self, name: str, resources: dict[str, float]) -> list[Command]:
        """A node joined with these resources (checked by the caller). A node
        joining again under the same name keeps what its running tasks hold."""
        node = self.nodes.get(name)
        if node is None:
            self.nodes[name] = Node(name, dict(resources), dict(resources))
        else:
            for res in set(node.total) | set(resources):
                delta = resources.get(res, 0.0) - node.total.get(res, 0.0)
                node.free[res] = node.free.get(res, 0.0) + delta
            node.total = dict(resources)
        return self.schedule()

    def remove_node(self, name: str) -> None:
        """A node left. Its workers are removed one by one (``remove_worker``);
        tasks they held resources for return them to this node's record, now
        forgotten. Jobs already defined keep waiting for a node that fits."""
        self.nodes.pop(name, None)

    def add_worker(self, peer: str, node: str, pid: int, max_tasks: int) -> list[Command]:
        worker = self.workers[peer] = Worker(peer, node, pid, max_tasks if max_tasks > 0 else -1)
        self.hungry.touch(worker)
        return self.schedule()

    def remove_worker(
        self, peer: str, exitcode: int | None, running: int | None = None, timed_out: bool = False,
        cause: WorkerDeath | None = None,
    ) -> list[Command]:
        """A worker died or vanished. The task it was running (``running``;
        -1 means it was between tasks; None means unknown, and then its oldest
        task is blamed) is charged an attempt; the rest of its queue goes back
        untouched. ``cause`` is what its node knows of the death (else the
        exit code alone speaks); the task's LOST text says it. With ``timed_out`` its supervisor killed it for running
        ``running`` past its job's timeout: that task fails as TIMEOUT, not
        charged and never retried."""
        worker = self.workers.pop(peer, None)
        if worker is None:
            return []
        self.hungry.discard(peer)
        assigned = list(worker.assigned.values())
        death = cause or WorkerDeath.of_exit(exitcode)
        if not timed_out and (exitcode != 0 or running != -1):
            self.totals.workers_lost += 1
            self.totals.last_lost = f"worker process pid {worker.pid} on node {worker.node!r} {death}"
        if running is None:
            running = assigned[0].key if assigned else -1
        cmds: list[Command] = []
        # Requeue in reverse so the original order is kept at the queue front.
        for task in reversed(assigned):
            task.worker = ""
            self._unhold(task)
            job = task.job
            client = self.clients.get(job.client)
            if client is not None:
                self._release(client, peer)
            if task.key == running and timed_out:
                text = (
                    f"task {task.task_id} ran past its task_timeout of {job.timeout:g} s: worker process "
                    f"pid {worker.pid} on node {worker.node!r} was killed (the task is not retried)"
                )
                cmds += self._finish(task, Status.TIMEOUT, [], [text, worker.node, worker.pid, job.timeout])
                continue
            # A worker killed for a cancel (doomed) was running the cancelled task, as its node saw
            # (cancels.py); if it ran this one all the same (the node could not stop it to look,
            # dmp.node.cancelkill), the kill was not its fault.
            if task.key == running and not worker.doomed:
                task.attempt += 1
                text = loss_text(death, worker.node, worker.pid)
                task.last_loss = [text, worker.node, worker.pid, exitcode, death.to_wire()]
                if task.attempt > job.max_retries:
                    info = [f"{text}; gave up after {task.attempt} attempts", *task.last_loss[1:]]
                    cmds += self._finish(task, Status.LOST, [], info)
                    continue
                self.totals.retried += 1
                if client is not None:
                    client.retried += 1
            self._requeue(task)
        for client in self.clients.values():
            for job in client.jobs.values():
                job.holders.discard(peer)
        return cmds + self.schedule()

    # --- client requests ------------------------------------------------------

    def define_job(
        self,
        peer: str,
        job_id: int,
        runner: list[Any],
        max_retries: int,
        timeout: float = 0.0,
        resources: dict[str, float] | None = None,
        idle_only: bool = False,
    ) -> list[Command]:
        """Define a job (``timeout`` and ``resources`` checked by the caller;
        ``idle_only``: its tasks go only to idle workers).

        A job whose ``resources`` no joined node has is refused: each of its
        tasks is answered REFUSED as it arrives (the client raises
        ValueError), so nothing waits for a node that is not there. Jobs
        defined while a fitting node was joined wait for one if it leaves,
        as every task waits while no worker is joined.
        """
        client = self.clients[peer]
        if job_id in client.jobs:
            return [Send(peer, protocol.Error(protocol.ErrorCode.BAD_MESSAGE, f"job {job_id} defined twice", job_id))]
        need = dict(resources or {})
        job = Job(self._next_job, peer, job_id, runner, max(0, max_retries), timeout=timeout, resources=need,
                  idle_only=bool(idle_only))
        client.jobs[job_id] = job
        self._next_job += 1
        if need and not any(node.covers(need, now=False) for node in self.nodes.values()):
            wanted = ", ".join(f"{k}={v:g}" for k, v in sorted(need.items()))
            have = "; ".join(
                f"{n.name}: " + (", ".join(f"{k}={v:g}" for k, v in sorted(n.total.items())) or "none")
                for n in self.nodes.values()
            ) or "no node has joined"
            job.refused = f"no joined node has resources {wanted} for one task (nodes have: {have})"
        return []

    def submit(self, peer: str, job_id: int, tasks: list[tuple[int, list[Any]]]) -> list[Command]:
        client = self.clients[peer]
        job = client.jobs.get(job_id)
        if job is None:
            return [Send(peer, protocol.Error(protocol.ErrorCode.UNKNOWN_JOB, f"unknown job {job_id}", job_id))]
        if job.refused:
            items = [[job_id, task_id, int(Status.REFUSED), 0, job.refused] for task_id, _ in tasks]
            return [Send(peer, protocol.JobResults(items))]
        if len(tasks) == 1 and not self._ready:
            # One task (apply_async), nothing queued anywhere: straight to the
            # worker schedule() would pick, without its general loop.
            task_id, frames = tasks[0]
            task = Task(self._next_task, job, task_id, frames)
            sent = self.give_now(client, job, task)
            if sent is not None:
                self._next_task += 1
                self.tasks[task.key] = task
                job.outstanding += 1
                return [sent]
        was_idle = not job.pending
        for task_id, frames in tasks:
            task = Task(self._next_task, job, task_id, frames)
            self._next_task += 1
            self.tasks[task.key] = task
            job.pending.append(task)
        job.outstanding += len(tasks)
        client.queued += len(tasks)
        self.queued_total += len(tasks)
        if was_idle and job.pending:
            self._activate(client, job)
        return self.schedule()

    def end_job(self, peer: str, job_id: int) -> list[Command]:
        client = self.clients.get(peer)
        job = client.jobs.get(job_id) if client else None
        if client is None or job is None:
            return []
        job.ended = True
        return self._maybe_forget(client, job)

    def cancel_job(self, peer: str, job_id: int) -> list[Command]:
        client = self.clients.get(peer)
        job = client.jobs.get(job_id) if client else None
        if client is None or job is None:
            return []
        return self._cancel(client, job, notify=True)

    # --- worker reports ------------------------------------------------------------

    def results(self, peer: str, items: list[list[Any]], frames: list[Any]) -> list[Command]:
        """Outcomes from a worker, both halves at once: :meth:`take_results`'s
        JobResults, then :meth:`settle`'s commands (the order they are sent in)."""
        sends = self.take_results(peer, items, frames)
        return sends + self.settle()

    def take_results(self, peer: str, items: list[list[Any]], frames: list[Any]) -> list[Command]:
        """The first half of a worker's outcomes: the JobResults for their clients.

        Every check is made here: a stale outcome (its worker gone, an old
        attempt, a task withdrawn by a cancel) or one of a job its client no
        longer has is dropped, and each accepted task is taken off its worker,
        so a duplicate is stale at once. The books (counts, the worker's
        credit, the run time estimate, a finished job forgotten, the next
        Dispatch) are kept by :meth:`settle`, which must follow before
        anything else reaches the scheduler: the reactor sends these first,
        so the result's next hop is not behind the bookkeeping.
        """
        assert self._unsettled is None, "settle() the last take_results() first"
        worker = self.workers.get(peer)
        if worker is None:
            return []
        out: dict[str, tuple[list[list[Any]], list[Any]]] = {}
        taken: list[tuple[Task, int, float]] = []
        pos = 0
        assigned, clients = worker.assigned, self.clients
        for key, attempt, status, nframes, run_s, info in items:
            start = pos
            pos += nframes
            task = assigned.get(key)
            if task is None or task.attempt != attempt:
                continue  # late result of a task that was given to someone else
            del assigned[key]
            taken.append((task, status, run_s))
            job = task.job
            client = clients.get(job.client)
            if client is not None and job.job_id in client.jobs:
                batch = out.get(client.peer)
                if batch is None:
                    batch = out[client.peer] = ([], [])
                batch[0].append([job.job_id, task.task_id, status, nframes, info])
                batch[1].extend(frames[start:pos])
        self._unsettled = (worker, taken, len(items))
        return [Send(to, protocol.JobResults(its), frs) for to, (its, frs) in out.items()]

    def settle(self) -> list[Command]:
        """The second half of the last :meth:`take_results`: its books, and what they let go out next."""
        unsettled = self._unsettled
        if unsettled is None:
            return []
        self._unsettled = None
        worker, taken, n_items = unsettled
        peer = worker.peer
        cmds: list[Command] = []
        run_total = 0.0
        clients, totals = self.clients, self.totals
        for task, status, run_s in taken:
            if task.held is not None:
                self._unhold(task)
            run_total += float(run_s)
            job = task.job
            client = clients.get(job.client)
            self.tasks.pop(task.key, None)
            job.outstanding -= 1
            job.timed = True
            failed = status != Status.OK  # as _count, inline: this loop runs once per task
            totals.done += 1
            totals.failed += failed
            if client is None:
                continue
            self._release(client, peer)
            client.done += 1
            client.failed += failed
            if job.ended and job.outstanding <= 0 and job.job_id in client.jobs:
                cmds += self._drop(client, job)  # as _maybe_forget
        done = len(taken)
        worker.done += done
        self.tasks_done += done
        self.hungry.touch(worker)
        if n_items:
            mean = run_total / n_items
            est = self.est_run_s
            est = mean if est is None else est + EWMA_ALPHA * (mean - est)
            self.est_run_s = est
            self.in_flight = max(1, min(MAX_IN_FLIGHT, math.ceil(PREFETCH_SECONDS / max(est, 1e-7))))
        if self._ready:
            cmds += self.schedule()
        return cmds

    # --- bookkeeping ---------------------------------------------------------------

    def _count(self, client: Client | None, status: int) -> None:
        failed = status != Status.OK
        self.totals.done += 1
        self.totals.failed += failed
        if client is not None:
            client.done += 1
            client.failed += failed

    def _finish(self, task: Task, status: Status, frames: list[Any], info: Any) -> list[Command]:
        self.tasks.pop(task.key, None)
        job = task.job
        job.outstanding -= 1
        client = self.clients.get(job.client)
        self._count(client, status)
        if client is None or job.job_id not in client.jobs:
            return []
        msg = protocol.JobResults([[job.job_id, task.task_id, int(status), len(frames), info]])
        return [Send(client.peer, msg, frames), *self._maybe_forget(client, job)]

    def _maybe_forget(self, client: Client, job: Job) -> list[Command]:
        if not (job.ended and job.outstanding <= 0):
            return []
        return self._drop(client, job)

    def _drop(self, client: Client, job: Job) -> list[Command]:
        client.jobs.pop(job.job_id, None)
        return [Send(w, protocol.ForgetJobs([job.key])) for w in job.holders if w in self.workers]

    # --- status ----------------------------------------------------------------

    def busy_workers(self) -> int:
        return sum(1 for w in self.workers.values() if w.assigned)

    def queued(self) -> int:
        return self.queued_total
