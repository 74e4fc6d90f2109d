"""Placement: which queued task goes to which worker next (no I/O).

The ready clients wait in a round robin; each worker has credit (how many
tasks it may hold, from the scheduler's estimate of task run time); a job
that needs resources runs only on an idle worker of a node that has them
free. ``schedule()`` turns credit and queues into Dispatch commands.
``Scheduler`` (scheduler.py) inherits this and keeps the books.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from dmp.wire import protocol
from dmp_server.hungry import Hungry
from dmp_server.records import Client, Command, Job, Node, Send, Task, Worker

# Tasks given to a worker at once, when they fit its credit, however many
# workers are idle (see Placement.schedule).
DISPATCH_BATCH = 32
# A Dispatch holds task frames of at most about this many bytes: a worker's
# share of large tasks goes as several messages, so it runs the first while
# the next arrives.
DISPATCH_BYTES = 1 << 20


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
        spread = share = -(-self.queued_total // len(hungry))
        if self.est_run_s is not None and share < DISPATCH_BATCH:
            share = max(share, min(self.in_flight, DISPATCH_BATCH))
        visited: list[Worker] = []
        while self._ready:
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
            while free > 0 and self._ready:
                job = self._pick(worker)
                if job is None:
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
                    job.holders.add(worker.peer)
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
        worker = self.hungry.pop_idle()
        if worker is None:
            return None
        free = self.credit(worker)
        if free <= 0:
            self.hungry.touch(worker)
            return None
        jobs: list[list[Any]] = []
        if worker.peer not in job.holders:
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

    def _pick(self, worker: Worker) -> Job | None:
        """Rotate the ready clients until the first may use ``worker``; its
        first job that may run there (None if no client has one).

        A job with resources may run only on an idle worker of a node that
        has them free (so no task waits behind another holding them); an
        ``idle_only`` job only on an idle worker.
        """
        ready = self._ready
        for _ in range(len(ready)):
            c = ready[0]
            if not c.max_workers or worker.peer in c.on or len(c.on) < c.max_workers:
                for job in c.active:
                    if job.idle_only and worker.assigned:
                        continue
                    if not job.resources:
                        return job
                    node = self.nodes.get(worker.node)
                    if node is not None and not worker.assigned and node.covers(job.resources, now=True):
                        return job
            ready.rotate(-1)
        return None

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
