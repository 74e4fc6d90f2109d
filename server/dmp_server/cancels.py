"""Cancelling a job on the workers (no I/O): withdraw its tasks, kill the ones running them.

    CancelJob / client gone --> Scheduler._cancel
        the job's queued tasks dropped; on each worker that holds some of them:
        its oldest is another job's --> withdrawn (ForgetJobs), the worker works on
        its oldest is the job's     --> Kill(worker, spare=its other tasks), worker doomed
    node / local supervisor: its slot shows one of those keys --WorkerSpared-->
        Scheduler.spared: undoomed, back to work; else (the job's task, an older one, none) killed

A worker runs its tasks in dispatch order, so its oldest assigned task is the
one running, as far as the manager knows. Results are batched (up to
dmp.node.worker.FLUSH_SECONDS) while a worker is busy, so that task may in
fact be done and another job's running: the manager cannot tell, the node can
(the worker's slot, dmp.node.slot), so the kill is conditional (docs/protocol.md).
``Scheduler`` (scheduler.py) inherits this.
"""

from __future__ import annotations

from dmp.wire import protocol
from dmp.wire.protocol import Status
from dmp_server.placement import Placement
from dmp_server.records import Client, Command, Job, Kill, Send


class Cancels(Placement):
    """The cancel half of a Scheduler: which workers to kill, and the ones spared."""

    def _drop(self, client: Client, job: Job) -> list[Command]:
        raise NotImplementedError  # Scheduler's: forget the job, ForgetJobs to its holders

    def _cancel(self, client: Client, job: Job, *, notify: bool) -> list[Command]:
        cmds: list[Command] = []
        for task in job.pending:
            self.tasks.pop(task.key, None)
        client.queued -= len(job.pending)
        self.queued_total -= len(job.pending)
        job.pending.clear()
        if job in client.active:
            client.active.remove(job)
            if not client.active and client in self._ready:
                self._ready.remove(client)
        # Only the workers the job was sent to can hold its tasks. A worker
        # whose oldest task is the job's is asked to die unless it runs one of
        # the tasks it was given after them (the Kill carries those keys; its
        # node decides, see spared); the job's tasks queued behind another
        # job's are withdrawn (the ForgetJobs of _drop takes them off its
        # queue; a result that comes anyway is stale, dropped).
        for peer in job.holders:
            worker = self.workers.get(peer)
            doomed = [t for t in worker.assigned.values() if t.job is job] if worker is not None else []
            if worker is None or not doomed:
                continue
            running = next(iter(worker.assigned.values()))
            for t in doomed:
                del worker.assigned[t.key]
                self._unhold(t)
                self.tasks.pop(t.key, None)
                self._release(client, peer)
            if running.job is job:
                worker.doomed += 1
                self.hungry.discard(peer)
                cmds.append(Kill(peer, list(worker.assigned)))  # its other tasks: spared if it runs one
            else:
                self.hungry.touch(worker)  # its load fell: the withdrawn tasks' credit is free again
        cmds += self._drop(client, job)
        if notify:
            cmds.append(Send(client.peer, protocol.JobResults([[job.job_id, -1, int(Status.CANCELLED), 0, "cancelled"]])))
        return cmds + self.schedule()

    def signal_job(self, peer: str, job_id: int, signum: int) -> list[Command]:
        """Process.terminate/kill (SignalJob): ``signum`` to the worker running the job's
        task, once that worker said TaskStarted. Before that the job is cancelled: its
        task never runs (a worker given it is killed unless it runs a task it was given
        after it, as for any cancel) and CANCELLED answers it. A worker killed before it
        ran the task would have it requeued, uncharged, to run elsewhere; and the client
        cannot tell itself, as its JobTaskStarted may come after what the process did
        through other paths."""
        client = self.clients.get(peer)
        job = client.jobs.get(job_id) if client is not None else None
        if client is None or job is None:
            return []
        held = [self.workers[p] for p in job.holders if p in self.workers]
        running = [w.peer for w in held if any(t.job is job and t.started for t in w.assigned.values())]
        if running:
            return [Kill(w, [], signum) for w in running]
        if job.pending or any(t.job is job for w in held for t in w.assigned.values()):
            return self._cancel(client, job, notify=True)
        return []

    def spared(self, peer: str, node: str | None = None) -> list[Command]:
        """Worker ``peer``'s node (``node``, if it is that worker's; None: the local
        supervisor) did not kill it for a Kill (WorkerSpared): it had finished the
        cancelled task (its result still batched there) and runs one given it after
        that. Once no other Kill of it is pending, it works on."""
        worker = self.workers.get(peer)
        if worker is None or not worker.doomed or (node is not None and node != worker.node):
            return []
        worker.doomed -= 1
        if worker.doomed:
            return []
        self.hungry.touch(worker)
        return self.schedule()
