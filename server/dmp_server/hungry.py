"""Which workers may take tasks now, without looking at every worker: an indexed free list.

    idle   workers holding no task (exact): they get work first, the first
           joined first (a heap), as a stable sort of every worker would give
           them (so a capped client, Pool(k), keeps the same k workers)
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

import heapq
from collections import OrderedDict

from dmp_server.records import Worker


class Hungry:
    """Workers that may have credit: idle ones (exact, first joined first), then open ones (lazy, in arrival order)."""

    __slots__ = ("_heap", "_joined", "_seq", "idle", "open")

    def __init__(self) -> None:
        self.idle: dict[str, Worker] = {}
        self._heap: list[tuple[int, str]] = []  # (join order, peer) of idle workers; stale entries skipped
        self.open: OrderedDict[str, Worker] = OrderedDict()
        self._joined: dict[str, int] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self.idle) + len(self.open)

    def touch(self, worker: Worker) -> None:
        """``worker``'s load fell or it joined: index it by whether it holds tasks."""
        peer = worker.peer
        if worker.doomed or worker.tasks_left == 0:
            self.discard(peer)
            return
        seq = self._joined.get(peer)
        if seq is None:
            seq = self._joined[peer] = self._seq
            self._seq += 1
        if worker.assigned:
            self.idle.pop(peer, None)
            if peer not in self.open:
                self.open[peer] = worker
        else:
            self.open.pop(peer, None)
            if peer not in self.idle:
                self.idle[peer] = worker
                heapq.heappush(self._heap, (seq, peer))

    def discard(self, peer: str) -> None:
        self.idle.pop(peer, None)
        self.open.pop(peer, None)
        self._joined.pop(peer, None)

    def pop(self) -> Worker | None:
        """The next worker to visit: the first joined idle one, else the longest open; None if none."""
        heap = self._heap
        while heap:
            seq, peer = heapq.heappop(heap)
            worker = self.idle.get(peer)
            if worker is not None and self._joined.get(peer) == seq:
                del self.idle[peer]
                return worker
        if self.open:
            return self.open.popitem(last=False)[1]
        return None

    def pop_idle(self) -> Worker | None:
        """The first joined idle worker, taken off the index (as :meth:`pop` takes it); None if none is idle."""
        if not self.idle:
            return None
        return self.pop()

    def put_back(self, workers: list[Worker]) -> None:
        """Workers visited but left with credit: indexed again, behind the others."""
        for worker in workers:
            self.touch(worker)
