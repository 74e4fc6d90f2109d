"""The benchmark vocabulary: rows, benchmarks, run settings, and the arithmetic.

A *row* is one line of the table: a named number with a unit, a direction
(higher or lower is better) and a target ratio. A *benchmark* is one
measurement that fills one or more rows (the round-trip benchmark fills
p50 and p99 from the same samples). A benchmark runs once per contender
(see contenders.py), repeating ``Config.reps`` times; the table shows the
median of those repetitions.

Ratios are oriented so that > 1.0 always means "dmp is better":
throughput rows divide dmp by the baseline, latency rows divide the
baseline by dmp.
"""

from __future__ import annotations

import enum
import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class Direction(enum.Enum):
    HIGHER = "higher"  # throughput: tasks/s, MB/s
    LOWER = "lower"  # latency: µs, ms


class Kind(enum.Enum):
    """Which face of a contender a benchmark needs."""

    POOL = "pool"
    MANAGER = "manager"


@dataclass(frozen=True)
class Row:
    name: str
    unit: str
    direction: Direction
    description: str
    #: dmp must reach at least this ratio against the baseline.
    target: float = 1.0


@dataclass(frozen=True)
class Config:
    """Run settings shared by every benchmark."""

    quick: bool = False
    #: Repetitions per benchmark and contender; the table shows their median.
    reps: int = 3
    processes: int = 2

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full


#: One repetition's numbers, keyed by row name.
RepValues = dict[str, float]
#: Runs every repetition of a benchmark against one contender.
MeasureFn = Callable[[Any, Config], list[RepValues]]


@dataclass(frozen=True)
class Benchmark:
    name: str
    kind: Kind
    rows: tuple[Row, ...]
    #: ``measure(contender, config)``: the contender is a loaded
    #: contenders.Contender; returns one RepValues per repetition.
    measure: MeasureFn


@dataclass
class Outcome:
    """What one benchmark did on one contender."""

    status: str  # "ok", "n/a", "error", "timeout" or "skipped"
    reason: str = ""
    reps: list[RepValues] = field(default_factory=list)
    elapsed_s: float = 0.0
    #: The full traceback of an "error", for --json readers.
    detail: str = ""

    def median(self, row: str) -> float | None:
        values = [rep[row] for rep in self.reps if row in rep]
        if self.status != "ok" or not values:
            return None
        return statistics.median(values)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "reps": self.reps,
            "elapsed_s": self.elapsed_s,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(
            status=str(data["status"]),
            reason=str(data.get("reason", "")),
            reps=[{str(k): float(v) for k, v in rep.items()} for rep in data.get("reps", [])],
            elapsed_s=float(data.get("elapsed_s", 0.0)),
            detail=str(data.get("detail", "")),
        )


def ratio(row: Row, baseline: float | None, candidate: float | None) -> float | None:
    """The candidate against the baseline, > 1.0 meaning the candidate is better."""
    if baseline is None or candidate is None or baseline <= 0 or candidate <= 0:
        return None
    if row.direction is Direction.HIGHER:
        return candidate / baseline
    return baseline / candidate


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest-rank."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def repeat(config: Config, min_reps: int, once: Callable[[], RepValues]) -> list[RepValues]:
    """Runs ``once`` for every repetition, collecting garbage between them
    so that one repetition's garbage is not timed in the next."""
    reps = 1 if config.quick else max(config.reps, min_reps)
    out = []
    for _ in range(reps):
        gc.collect()
        out.append(once())
    return out


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds``."""

    seconds: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
