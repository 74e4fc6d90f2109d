"""Placement: which queued task goes to which worker next (no I/O).

The ready clients wait in a round robin; each worker has credit (how many
tasks it may hold, from the scheduler's estimate of task run time); a job
that needs resources runs only on an idle worker of a node that has them
free. ``schedule()`` turns credit and queues into Dispatch commands.
``Scheduler`` (scheduler.py) inherits this and keeps the books.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from dmp.wire import protocol
from dmp_server.hungry import Hungry
from dmp_server.records import Client, Command, Job, Node, Send, Task, Worker

# Tasks given to a worker at once, when they fit its credit, however many
# workers are idle (see Placement.schedule).
DISPATCH_BATCH = 64
# A Dispatch holds task frames of at most about this many bytes: a worker's
# share of large tasks goes as several messages, so it runs the first while
# the next arrives.
DISPATCH_BYTES = 1 << 20
# A job none of whose tasks has finished goes to at most PROBE_WORKERS workers
# until one finishes or PROBE_S seconds have passed since its first went out
# (then its tasks are long: it is spread over every idle worker, at the next
# schedule, the manager's next beat at the latest). Spreading a job of tiny
# tasks over a thousand idle workers first would cost a Dispatch, a TaskDone
# and a JobResults per task for the first thousand of them.
PROBE_WORKERS = 64
PROBE_S = 0.25


class Placement:
    """The ready queue and the worker credit of a Scheduler."""

    clients: dict[str, Client]
    workers: dict[str, Worker]
    tasks: dict[int, Task]
    nodes: dict[str, Node]
    _ready: deque[Client]  # clients with pending tasks, round robin
    queued_total: int  # tasks waiting in any client's queue
    in_flight: int  # tasks a worker may hold
    est_run_s: float | None  # mean task run time, once any task finished
    hungry: Hungry  # workers that may take tasks (see dmp_server.hungry)
    clock: Callable[[], float]  # seconds, monotonic (a job's probe: PROBE_S)

    # --- scheduling ------------------------------------------------------------------

    def credit(self, worker: Worker) -> int:
        if worker.doomed:
            return 0
        if worker.assigned and next(iter(worker.assigned.values())).job.idle_only:
            return 0  # given to it idle, so first: nothing queues behind it (a remote Process, a start-up task)
        free = self.in_flight - len(worker.assigned)
        if worker.tasks_left >= 0:
            free = min(free, worker.tasks_left)
        return free

    def schedule(self) -> list[Command]:
        """Give idle credit work, one task per client in turn.

        Workers come from the ``hungry`` index (idle ones first), never from
        a scan of every worker: a dispatch costs the workers it visits.
        """
        if not self._ready:
            return []
        hungry = self.hungry
        if not hungry:
            return []
        cmds: list[Command] = []
        # Spread evenly: no worker takes more than its share of what is queued,
        # so two tasks on two idle workers run side by side, not one behind the other.
        # But once tasks are known to be short, a worker takes up to
        # DISPATCH_BATCH of them at once (at most PREFETCH_SECONDS of work, as
        # its credit says): spreading them one per worker over a thousand
        # workers would cost a Dispatch and a Results message per task.
        # The run time known is the last jobs': a job none of whose tasks has finished yet
        # (a GridSearchCV fold after quick warm-ups) is spread, never batched behind one worker.
        # A job whose run time is unknown goes to a worker in one Dispatch of at most
        # ``spread`` tasks, then no more of it until one of its tasks finishes (_pick):
        # more one-task Dispatches to workers already running it would stack its tasks
        # behind each other all the same, at a message pair per task (a thousand workers).
        spread = share = -(-self.queued_total // len(hungry))
        if self.est_run_s is not None and share < DISPATCH_BATCH:
            share = max(share, min(self.in_flight, DISPATCH_BATCH))
        # Unless a waiting client is capped or a waiting job needs resources, a worker
        # no waiting job may use means the others may not either (idle ones come
        # first; the rest run the unknown jobs or are past their probe): stop there.
        particular = any(c.max_workers or any(j.resources for j in c.active) for c in self._ready)
        visited: list[Worker] = []
        stop = False
        while self._ready and not stop:
            worker = hungry.pop()
            if worker is None:
                break
            free = min(self.credit(worker), share)
            if free <= 0:
                continue  # full: indexed again at its next results
            visited.append(worker)
            jobs: list[list[Any]] = []
            job_frames: list[Any] = []
            items: list[list[int]] = []
            frames: list[Any] = []
            taken = nbytes = 0
            fresh: list[int] = []  # jobs this worker is given first in this visit (its Dispatches may be several)
            while free > 0 and self._ready:
                job = self._pick(worker, fresh)
                if job is None:
                    if not taken and not particular:
                        stop = True
                    break  # every waiting client is at its cap of workers, or needs resources not free here
                if not job.timed and taken >= spread:
                    break  # its tasks' run time is unknown: spread them
                client = self._ready[0]
                task = job.pending.popleft()
                if not job.pending:
                    client.active.remove(job)  # the first, unless others wait for resources
                if not client.active:
                    self._ready.popleft()
                elif len(self._ready) > 1:
                    self._ready.rotate(-1)
                if job.resources:
                    node = self.nodes[worker.node]  # _pick saw it there
                    for res, amount in job.resources.items():
                        node.free[res] -= amount
                    task.held = node
                if worker.peer not in job.holders:
                    if not job.first_out:
                        job.first_out = self.clock()
                    job.holders.add(worker.peer)
                    fresh.append(job.key)
                    jobs.append([job.key, len(job.runner), job.timeout])
                    job_frames.extend(job.runner)
                task.worker = worker.peer
                worker.assigned[task.key] = task
                if worker.tasks_left > 0:
                    worker.tasks_left -= 1
                client.queued -= 1
                self.queued_total -= 1
                client.running += 1
                client.on[worker.peer] = client.on.get(worker.peer, 0) + 1
                items.append([task.key, job.key, task.attempt, len(task.frames)])
                frames.extend(task.frames)
                free -= 1
                taken += 1
                # Task frames are bytes or byte-format views: len is their size.
                tf = task.frames
                nbytes += len(tf[0]) if len(tf) == 1 else sum(map(len, tf))
                if nbytes >= DISPATCH_BYTES:
                    cmds.append(Send(worker.peer, protocol.Dispatch(jobs, items), job_frames + frames))
                    jobs, job_frames, items, frames = [], [], [], []
                    nbytes = 0
                if job.idle_only:
                    break  # nothing queues behind it, not even in this Dispatch
            if items:
                cmds.append(Send(worker.peer, protocol.Dispatch(jobs, items), job_frames + frames))
        hungry.put_back([w for w in visited if self.credit(w) > 0])
        return cmds

    def give_now(self, client: Client, job: Job, task: Task) -> Command | None:
        """``task`` (not queued) to the first idle worker, as :meth:`schedule`
        would give it when nothing else waits; None (nothing done) when it
        would not be that simple: other clients wait, no worker is idle, the
        job needs resources, or the client is at its cap of workers."""
        if self._ready or job.resources or (client.max_workers and len(client.on) >= client.max_workers):
            return None
        if not job.timed and not self._probe_open(job):
            return None  # its probe is full: it waits for a task of it to finish (schedule)
        worker = self.hungry.pop_idle()
        if worker is None:
            return None
        free = self.credit(worker)
        if free <= 0:
            self.hungry.touch(worker)
            return None
        jobs: list[list[Any]] = []
        if worker.peer not in job.holders:
            if not job.first_out:
                job.first_out = self.clock()
            job.holders.add(worker.peer)
            jobs.append([job.key, len(job.runner), job.timeout])
        task.worker = worker.peer
        worker.assigned[task.key] = task
        if worker.tasks_left > 0:
            worker.tasks_left -= 1
        client.running += 1
        client.on[worker.peer] = client.on.get(worker.peer, 0) + 1
        if free > 1 and not job.idle_only:  # its credit now, as schedule() would find it
            self.hungry.touch(worker)
        items = [[task.key, job.key, task.attempt, len(task.frames)]]
        return Send(worker.peer, protocol.Dispatch(jobs, items), [*job.runner, *task.frames] if jobs else task.frames)

    # --- internals ---------------------------------------------------------------

    def _pick(self, worker: Worker, fresh: list[int]) -> Job | None:
        """Rotate the ready clients until the first may use ``worker``; its
        first job that may run there (None if no client has one).

        A job with resources may run only on an idle worker of a node that
        has them free (so no task waits behind another holding them); an
        ``idle_only`` job only on an idle worker; a job none of whose tasks
        has finished, only on a worker not running it yet, or in the visit
        that brings it there (among ``fresh``, the jobs new to it in this
        visit), and on a new one only while probing allows it (PROBE_WORKERS).
        """
        ready = self._ready
        peer = worker.peer
        for _ in range(len(ready)):
            c = ready[0]
            if not c.max_workers or peer in c.on or len(c.on) < c.max_workers:
                for job in c.active:
                    if job.idle_only and worker.assigned:
                        continue
                    if not job.timed and not self._may_try(job, peer, fresh):
                        continue
                    if not job.resources:
                        return job
                    node = self.nodes.get(worker.node)
                    if node is not None and not worker.assigned and node.covers(job.resources, now=True):
                        return job
            ready.rotate(-1)
        return None

    def _may_try(self, job: Job, peer: str, fresh: list[int]) -> bool:
        """May worker ``peer`` take a task of ``job``, none of whose tasks has finished?"""
        if peer in job.holders:
            return job.key in fresh
        return self._probe_open(job)

    def _probe_open(self, job: Job) -> bool:
        """May ``job``, none of whose tasks has finished, go to one more worker?"""
        return len(job.holders) < PROBE_WORKERS or self.clock() - job.first_out >= PROBE_S

    @staticmethod
    def _unhold(task: Task) -> None:
        """Give back the resources ``task`` holds, once (to the node record it took them from)."""
        node = task.held
        if node is None:
            return
        task.held = None
        for res, amount in task.job.resources.items():
            node.free[res] = node.free.get(res, 0.0) + amount

    def _release(self, client: Client, worker: str) -> None:
        """One of ``client``'s tasks left ``worker`` (done, lost or cancelled)."""
        client.running -= 1
        n = client.on.get(worker, 0) - 1
        if n > 0:
            client.on[worker] = n
        else:
            client.on.pop(worker, None)

    def _activate(self, client: Client, job: Job) -> None:
        client.active.append(job)
        if len(client.active) == 1:
            self._ready.append(client)

    def _requeue(self, task: Task) -> None:
        job = task.job
        client = self.clients.get(job.client)
        if client is None or job.job_id not in client.jobs:
            self.tasks.pop(task.key, None)
            return
        if not job.pending:
            job.pending.appendleft(task)
            client.active.appendleft(job)
            if len(client.active) == 1:
                self._ready.appendleft(client)
        else:
            job.pending.appendleft(task)
        client.queued += 1
        self.queued_total += 1
