"""The running-task slot: a few bytes of shared memory between a worker and its supervisor.

    worker: before a task, SLOT.pack_into(slot, 0, key, attempt, deadline);
            after it, back to (-1, 0, 0.0)
    supervisor: read_slot (which task a dead worker was running),
                read_deadline (kill a worker whose task is past its deadline)

A forked worker inherits an anonymous mapping (new_slot); a spawned or
forkserver worker gets a memfd-backed one (FdSlot) whose fd travels with it.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Any

# Slot layout: running task key (-1: none), its attempt, and its deadline in
# time.monotonic() seconds (0: none). CLOCK_MONOTONIC is one clock for every
# process of a host, so the supervisor can compare it with its own.
SLOT = struct.Struct("<qqd")
SLOT_SIZE = SLOT.size


def new_slot() -> mmap.mmap:
    """Shared memory (inherited across fork) holding the running task key."""
    slot = mmap.mmap(-1, SLOT_SIZE)
    SLOT.pack_into(slot, 0, -1, 0, 0.0)
    return slot


class FdSlot(mmap.mmap):
    """A slot that a spawned or forkserver worker can share: memfd-backed, it
    pickles as a duplicate of its fd (only while a process is being started)."""

    fd: int

    def __new__(cls) -> FdSlot:
        fd = os.memfd_create("dmp-slot", os.MFD_CLOEXEC)
        os.ftruncate(fd, SLOT_SIZE)
        self = super().__new__(cls, fd, SLOT_SIZE)
        self.fd = fd
        SLOT.pack_into(self, 0, -1, 0, 0.0)
        return self

    def __reduce__(self) -> Any:
        from multiprocessing import reduction

        return (_attach_slot, (reduction.DupFd(self.fd),))

    def close(self) -> None:
        super().close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _attach_slot(dup: Any) -> mmap.mmap:
    fd = dup.detach()
    try:
        return mmap.mmap(fd, SLOT_SIZE)
    finally:
        os.close(fd)


def read_slot(slot: mmap.mmap) -> int:
    key, _attempt, _deadline = SLOT.unpack_from(slot, 0)
    return int(key)


def read_deadline(slot: mmap.mmap) -> tuple[int, float]:
    """(running task key, its deadline) from a slot; the deadline is 0.0 if none."""
    key, _attempt, deadline = SLOT.unpack_from(slot, 0)
    return int(key), float(deadline)
