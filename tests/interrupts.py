"""Ctrl-C at random moments of a running map, then the pool must still work (local and cluster)."""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Callable
from typing import Any


def interrupt_maps_then_use(
    pool: Any, square: Callable[[int], int], *, rounds: int, seed: int, delay: tuple[float, float], check: int
) -> int:
    """SIGINT this process during ``rounds`` maps of tiny tasks, checking the pool after each.

    Returns how many maps the interrupt stopped (the caller asserts some did).
    """
    rng = random.Random(seed)
    interrupted = 0
    for _ in range(rounds):
        timer = threading.Timer(rng.uniform(*delay), os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            try:
                pool.map(square, range(20_000), chunksize=1)
            finally:
                timer.join()  # the interrupt may come after the map: catch it here too
        except KeyboardInterrupt:
            interrupted += 1
        assert pool.map_async(square, range(check), chunksize=1).get(timeout=30) == [i * i for i in range(check)]
    return interrupted
