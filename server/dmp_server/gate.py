"""The manager's door: refusals at a bounded rate, and checks on what authenticated peers send.

A stranger's flood must cost the manager neither its log nor its memory:
:class:`Refusals` logs at most one line per peer per interval (with a count
of what it held back) and at most ``MAX_LINES`` lines per interval in all,
and answers a peer at most once per interval. :func:`check_results`
validates every value of a worker's ``TaskDone`` before the scheduler sees
it, so a poison value is refused alone.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from dmp.errors import ProtocolError
from dmp.wire.protocol import Status

INTERVAL_S = 10.0
MAX_LINES = 20  # log lines per interval, all peers together
MAX_TRACKED = 10_000  # peers remembered between intervals
TRIM_AFTER = 1000  # refusals in one interval after which memory is handed back
MAX_RUN_S = 1e9  # a task's run time, in seconds, beyond any real one


class Refusals:
    """Counts refused messages per peer; decides what gets logged and answered."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.counts: dict[bytes | None, list[Any]] = {}  # ident -> [held back, last reason]
        self.lines = 0
        self.total = 0
        self.window_end = 0.0

    def refused(self, ident: bytes | None, reason: str, now: float) -> bool:
        """Note a refusal; True if the sender may be answered now (once per interval)."""
        self.total += 1
        if now >= self.window_end:
            self.flush(now)
        seen = self.counts.get(ident)
        if seen is not None:
            seen[0] += 1
            seen[1] = reason
            return False
        if len(self.counts) < MAX_TRACKED:
            self.counts[ident] = [0, reason]
        if self.lines < MAX_LINES:
            self.lines += 1
            self.log.warning("refused a message from %s: %s", _show(ident), reason)
        return True

    def flush(self, now: float) -> None:
        """End the interval: one line per peer that was held back, with its count."""
        for ident, (count, reason) in self.counts.items():
            if count and self.lines < MAX_LINES * 2:
                self.lines += 1
                self.log.warning("refused %d more messages from %s (last: %s)", count, _show(ident), reason)
        if self.total >= TRIM_AFTER:
            trim_memory()
        self.counts = {}
        self.lines = 0
        self.total = 0
        self.window_end = now + INTERVAL_S


def trim_memory() -> None:
    """Hand memory freed after a flood back to the system (glibc keeps it otherwise)."""
    import ctypes  # only after a flood: a daemon (or a local pool) that never sees one never loads it
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def check_results(items: list[Any]) -> None:
    """Validate a worker's TaskDone items: [task key, attempt, status, nframes, run s, info].

    A worker reports only what its task did (OK or RAISED, info ""); LOST,
    TIMEOUT, CANCELLED and REFUSED are the manager's to say.

    Raises:
        ProtocolError: naming the first bad value.
    """
    for item in items:
        key, attempt, status, _nframes, run_s, info = item
        if type(key) is not int or type(attempt) is not int or attempt < 0:
            raise ProtocolError(f"TaskDone item {item[:3]!r}: task key and attempt must be ints >= 0")
        if type(status) is not int or status not in _WORKER_STATUSES:
            raise ProtocolError(f"TaskDone item for task {key}: status {status!r} is not OK (0) or RAISED (1)")
        if type(run_s) not in (int, float) or not math.isfinite(run_s) or not 0 <= run_s <= MAX_RUN_S:
            raise ProtocolError(f"TaskDone item for task {key}: run time {run_s!r} is not a finite number of seconds")
        if info != "":
            raise ProtocolError(f"TaskDone item for task {key}: info must be \"\", not {info!r:.80}")


_WORKER_STATUSES = frozenset({int(Status.OK), int(Status.RAISED)})


def _show(ident: bytes | None) -> str:
    return ident.hex()[:40] if ident else "?"
