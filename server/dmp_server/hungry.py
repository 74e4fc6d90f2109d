"""Which workers may take tasks now, without looking at every worker: an indexed free list.

    idle   workers holding no task (exact): they get work first
    open   workers holding some tasks that had credit left when last touched
           (lazy: one found full when visited is dropped until its next results)

The scheduler calls :meth:`Hungry.touch` whenever a worker's load falls (it
joined, results came back, its tasks were requeued or cancelled) and
:meth:`Hungry.discard` when it goes; ``schedule()`` takes workers from the
front with :meth:`pop` and gives back those it did not fill with
:meth:`put_back`. Each visit either dispatches, drops a full worker, or
skips one no waiting client may use (capped clients, resources); so a
dispatch costs O(workers visited), not O(all workers). A worker whose credit
grows without its load falling (the task-time estimate shortened) is found
again at its next results.
"""

from __future__ import annotations

from collections import OrderedDict

from dmp_server.records import Worker


class Hungry:
    """Workers that may have credit: idle ones (exact), then open ones (lazy), each in arrival order."""

    __slots__ = ("idle", "open")

    def __init__(self) -> None:
        self.idle: OrderedDict[str, Worker] = OrderedDict()
        self.open: OrderedDict[str, Worker] = OrderedDict()

    def __len__(self) -> int:
        return len(self.idle) + len(self.open)

    def touch(self, worker: Worker) -> None:
        """``worker``'s load fell or it joined: index it by whether it holds tasks."""
        peer = worker.peer
        if worker.doomed or worker.tasks_left == 0:
            self.discard(peer)
        elif worker.assigned:
            self.idle.pop(peer, None)
            if peer not in self.open:
                self.open[peer] = worker
        else:
            self.open.pop(peer, None)
            if peer not in self.idle:
                self.idle[peer] = worker

    def discard(self, peer: str) -> None:
        self.idle.pop(peer, None)
        self.open.pop(peer, None)

    def pop(self) -> Worker | None:
        """The next worker to visit: the longest idle, else the longest open; None if none."""
        if self.idle:
            return self.idle.popitem(last=False)[1]
        if self.open:
            return self.open.popitem(last=False)[1]
        return None

    def put_back(self, workers: list[Worker]) -> None:
        """Workers visited but left with credit: indexed again, behind the others."""
        for worker in workers:
            self.touch(worker)
