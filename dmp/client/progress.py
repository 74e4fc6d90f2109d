"""``progress=`` on the map family: a tqdm bar that a map's sink advances.

    Pool.map/imap/... (caller's thread) --start(progress, total)--> Progress
    link thread, per task outcome --advance(items)--> count, hand to tqdm
                                                      at most every mininterval
    result complete / job failed / terminate / Ctrl-C in the waiter --> close()

The sink calls :meth:`Progress.advance` on the link's thread, where work must
stay cheap: items are counted here and handed to tqdm at most once per
``mininterval`` (tqdm's own, 0.1 s by default). Even the clock is read only
every so many outcomes, that many being set from the rate seen so far (about
eight reads per interval), so a 100k-task chunksize=1 map pays two counter
updates per task, not a tqdm update. A bar that fails to draw (its file
closed) stops quietly: it must never cost a map its results.
``close`` hands over what is still counted and closes the bar; it is safe
from any thread and more than once. tqdm is optional (the ``progress`` extra).
"""

from __future__ import annotations

import threading
import time
from typing import Any

EXTRA_HINT = "progress= needs tqdm, which is optional: pip install 'dmp-multiprocessing[progress]' (or pip install tqdm)"


class Progress:
    """One map's bar: counts finished items and closes the bar exactly once."""

    __slots__ = ("_bar", "_chunksize", "_countdown", "_every", "_interval", "_last", "_length", "_lock", "_next", "_pending", "closed")

    def __init__(self, bar: Any, chunksize: int, length: int | None) -> None:
        self._bar = bar
        self._chunksize = chunksize
        self._length = length
        self._interval = float(getattr(bar, "mininterval", 0.1) or 0.0)
        self._lock = threading.Lock()
        self._next = 0.0  # the first outcome shows at once
        self._pending = 0
        self._every = 1  # outcomes between clock reads
        self._countdown = 1
        self._last = time.monotonic()
        self.closed = False

    def chunk_items(self, task_id: int) -> int:
        """How many items chunk ``task_id`` holds (its list may not be at hand)."""
        if self._length is None:
            return self._chunksize
        return max(0, min(self._chunksize, self._length - task_id * self._chunksize))

    def advance(self, items: int) -> None:
        """``items`` more items finished (ok or failed)."""
        self._pending += items
        self._countdown -= 1
        if self._countdown <= 0:
            self._tick()

    def _tick(self) -> None:
        now = time.monotonic()
        rate = self._every / max(now - self._last, 1e-6)  # outcomes per second lately
        self._every = self._countdown = max(1, min(4096, int(rate * self._interval / 8)))
        self._last = now
        if now < self._next:
            return
        with self._lock:
            if self.closed:
                return
            pending, self._pending = self._pending, 0
            self._next = now + self._interval
            try:
                self._bar.update(pending)
            except Exception:  # the bar is for show: a broken one (its file closed) must not lose results
                self.closed = True

    def close(self) -> None:
        """Show the final count and close the bar (idempotent, any thread)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            pending, self._pending = self._pending, 0
        try:
            if pending:
                self._bar.update(pending)
            self._bar.close()
        except Exception:  # as in advance: never let the bar break the map
            pass


def start(progress: object, total: int | None, chunksize: int = 1) -> Progress | None:
    """The bar ``progress=`` asks for, or None for ``False``.

    ``True`` draws a tqdm bar on stderr; a dict is passed to tqdm as keyword
    arguments (``total`` defaults to the input's length, None when unknown).

    Raises:
        TypeError: ``progress`` is not a bool or a dict.
        ImportError: a bar was asked for and tqdm is not installed.
    """
    if progress is False or progress is None:
        return None
    if progress is True:
        options: dict[str, Any] = {}
    elif isinstance(progress, dict):
        options = dict(progress)
    else:
        raise TypeError(f"progress= takes True, False or a dict of tqdm keyword arguments, not {progress!r}")
    try:
        from tqdm import tqdm
    except ImportError as exc:
        raise ImportError(EXTRA_HINT) from exc
    options.setdefault("total", total)
    return Progress(tqdm(**options), chunksize, total)
